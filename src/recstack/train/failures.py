"""Failure emulation and the checkpoint-overhead model of CPR (REFERENCE.md section 4).

Embedding shards live on `n_emb` emulated embedding nodes. A `FailureModel` draws when nodes fail
(exponential gaps with the cluster's MTBF, or times read from a trace file); a `CostModel` says
what saving, loading and rescheduling cost. The functions below are CPR's closed forms: the
checkpoint interval of full recovery (Young's formula), the interval that keeps the portion of
lost samples (PLS) at a target under partial recovery, and the expected overhead of each, which
CPR compares to decide whether partial recovery pays.

Overhead, as a fraction of failure-free training time T:
    full:    O_save/T_save + (O_load + O_resched + T_save/2) / T_fail
    partial: O_save/T_save + (O_load/n_emb + O_resched_partial) / T_fail
Full recovery reloads everything and recomputes on average half an interval; partial recovery
reloads only the failed node's shard (1/n_emb of the tables) and loses that shard's updates
instead of recomputing them (PLS ~ T_save / (2 n_emb T_fail)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recstack.errors import ConfigError, DataError


@dataclass(frozen=True)
class Failure:
    time_s: float  # seconds since the start of training
    node: int  # the emulated embedding node that fails


@dataclass(frozen=True)
class CostModel:
    """Seconds each checkpoint-related event costs the whole job.

    The defaults emulate a production training cluster; they are not measured here. They were
    chosen so that full recovery with Young's interval costs 8.5% of training time, the published
    full-recovery overhead (8.2-8.5%, REFERENCE.md section 4): cluster MTBF 8 h, a full
    checkpoint save 60 s, reloading a full checkpoint 300 s, rescheduling the job after a
    failure 300 s. With partial recovery only the failed node is rescheduled; the others keep
    training, so the job loses `resched_partial_s` (default 0: a spare node takes over).
    """

    save_s: float = 60.0
    load_s: float = 300.0
    resched_s: float = 300.0
    resched_partial_s: float = 0.0
    mtbf_s: float = 8 * 3600.0

    def __post_init__(self) -> None:
        for name in ("save_s", "load_s", "resched_s", "resched_partial_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.mtbf_s > 0:
            raise ConfigError(f"mtbf_s: must be > 0, got {self.mtbf_s}")


def young_interval(save_s: float, mtbf_s: float) -> float:
    """Young's optimal checkpoint interval for full recovery: sqrt(2 * O_save * T_fail)."""
    return math.sqrt(2.0 * save_s * mtbf_s)


def cpr_interval(target_pls: float, n_emb: int, mtbf_s: float) -> float:
    """The partial-recovery interval that keeps the expected PLS at `target_pls`: 2 PLS n_emb T_fail."""
    if not 0 < target_pls < 1:
        raise ConfigError(f"target_pls: must be in (0, 1), got {target_pls}")
    if n_emb < 1:
        raise ConfigError(f"emb_nodes: must be >= 1, got {n_emb}")
    return 2.0 * target_pls * n_emb * mtbf_s


def expected_pls(interval_s: float, n_emb: int, mtbf_s: float) -> float:
    """Expected portion of lost samples under partial recovery: T_save / (2 n_emb T_fail)."""
    return interval_s / (2.0 * n_emb * mtbf_s)


def expected_overhead(policy: str, interval_s: float, cost: CostModel, n_emb: int = 1) -> float:
    """Expected checkpoint-related overhead (fraction of failure-free time) of `policy` full|partial."""
    if interval_s <= 0:
        raise ConfigError(f"checkpoint interval must be > 0 s, got {interval_s}")
    saving = cost.save_s / interval_s
    if policy == "full":
        return saving + (cost.load_s + cost.resched_s + interval_s / 2.0) / cost.mtbf_s
    if policy == "partial":
        return saving + (cost.load_s / n_emb + cost.resched_partial_s) / cost.mtbf_s
    raise ConfigError(f"policy: {policy!r} is not one of full, partial")


def choose_policy(target_pls: float, n_emb: int, cost: CostModel) -> tuple[str, float, dict[str, float]]:
    """CPR's decision: (policy, interval_s, both expected overheads), partial only when it wins."""
    full_t = young_interval(cost.save_s, cost.mtbf_s)
    part_t = cpr_interval(target_pls, n_emb, cost.mtbf_s)
    est = {"full": expected_overhead("full", full_t, cost), "partial": expected_overhead("partial", part_t, cost, n_emb)}
    if est["partial"] < est["full"]:
        return "partial", part_t, est
    return "full", full_t, est


@dataclass(frozen=True)
class FailureModel:
    """When which emulated embedding node fails: exponential gaps with the cluster MTBF (failures
    anywhere in the cluster), each on a uniformly chosen node; or a fixed list from a trace."""

    mtbf_s: float | None = None
    trace: tuple[Failure, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.mtbf_s is None) == (self.trace is None):
            raise ConfigError("failures: give exactly one of an MTBF (--mtbf) or a failure trace (--failures)")
        if self.mtbf_s is not None and not self.mtbf_s > 0:
            raise ConfigError(f"--mtbf: must be > 0 seconds, got {self.mtbf_s}")

    def draw(self, horizon_s: float, n_emb: int) -> list[Failure]:
        """Failures in [0, horizon_s), in time order; the same seed gives the same sequence.

        Trace lines that name no node get a seeded uniform node.
        """
        if n_emb < 1:
            raise ConfigError(f"emb_nodes: must be >= 1, got {n_emb}")
        rng = np.random.default_rng(self.seed)
        out: list[Failure] = []
        if self.trace is not None:
            for f in self.trace:
                if f.time_s >= horizon_s:
                    break
                node = f.node if f.node >= 0 else int(rng.integers(n_emb))
                if node >= n_emb:
                    raise ConfigError(f"failure trace names node {node}, but there are {n_emb} embedding nodes")
                out.append(Failure(f.time_s, node))
            return out
        assert self.mtbf_s is not None
        t = 0.0
        while True:
            t += float(rng.exponential(self.mtbf_s))
            if t >= horizon_s:
                return out
            out.append(Failure(t, int(rng.integers(n_emb))))

    @classmethod
    def from_file(cls, path: str | Path, seed: int = 0) -> FailureModel:
        """A trace: one failure per line, `TIME_S` or `TIME_S NODE` (node drawn by seed if absent);
        blank lines and `#` comments are ignored; times must increase."""
        p = Path(path)
        try:
            lines = p.read_text().splitlines()
        except FileNotFoundError:
            raise DataError(f"{p}: failure trace not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read failure trace ({e})") from None
        out: list[Failure] = []
        for no, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.replace(",", " ").split()
            try:
                t = float(fields[0])
                node = int(fields[1]) if len(fields) > 1 else -1
                if len(fields) > 2 or not math.isfinite(t) or t < 0 or (len(fields) > 1 and node < 0):
                    raise ValueError
            except ValueError:
                raise DataError(f"{p}:{no}: expected 'TIME_S [NODE]' with TIME_S >= 0, got {raw.strip()!r}") from None
            if out and t < out[-1].time_s:
                raise DataError(f"{p}:{no}: failure times must not decrease ({t} after {out[-1].time_s})")
            out.append(Failure(t, node))  # node -1: drawn by draw()
        return cls(trace=tuple(out), seed=seed)
