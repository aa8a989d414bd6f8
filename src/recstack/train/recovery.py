"""Emulated failures and recovery during training: full recovery and CPR's partial recovery.

The embedding rows of all tables are split into `emb_nodes` contiguous row ranges, one per
emulated embedding node (row-wise sharding). The run stands for `job_hours` of production
training; a `FailureModel` draws failures over that horizon and each lands on a step. Policies:

- `full`: a full snapshot every Young interval; a failure reloads it everywhere and replays the
  lost steps (the trainer is deterministic, so the replay recomputes exactly what was lost).
- `cpr`: a full snapshot every interval chosen for the target PLS (if CPR's cost estimate says
  partial recovery wins; else it behaves as `full`); a failure restores only the failed node's
  rows (weights and row-wise optimizer state) from the snapshot, the rest of the model keeps
  training; that node's updates since the snapshot are lost.
- `cpr-mfu`: as `cpr`, plus a per-row access counter; between full snapshots the most
  frequently used rows (a budget of `row_budget` of each table's rows) are saved
  `partial_saves` times per interval, so hot rows lose fewer updates.
- `cpr-ssu`: as `cpr-mfu` without counters: rows used in each step are sub-sampled into a
  bounded buffer, and the buffer is saved.

Measured, not modelled: the lost embedding updates. Every (row, step) access after the row's
last save is an update at risk; a failure loses those of the failed node's rows. PLS incurred
= lost updates / all updates. Time overheads (save, load, reschedule, replayed steps) come from
the `CostModel`, with a step worth job_hours / steps of production time.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from recstack.errors import ConfigError
from recstack.train.failures import CostModel, FailureModel, choose_policy, expected_pls, young_interval

POLICIES = ("none", "full", "cpr", "cpr-mfu", "cpr-ssu")


@dataclass
class RecoverySpec:
    """How failures are emulated and recovered from (the `--recovery` family of options)."""

    policy: str = "none"
    emb_nodes: int = 8
    failures: FailureModel | None = None  # default: exponential with the cost model's MTBF
    cost: CostModel = field(default_factory=CostModel)
    target_pls: float = 0.02
    job_hours: float = 24.0
    row_budget: float = 0.05  # MFU/SSU: fraction of each table's rows per partial save
    partial_saves: int = 4  # MFU/SSU: partial saves per full interval
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"--recovery: {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.emb_nodes < 1:
            raise ConfigError(f"--emb-nodes must be >= 1, got {self.emb_nodes}")
        if not 0 < self.target_pls < 1:
            raise ConfigError(f"--target-pls must be in (0, 1), got {self.target_pls}")
        if not self.job_hours > 0:
            raise ConfigError(f"job_hours must be > 0, got {self.job_hours}")
        if not 0 < self.row_budget <= 1:
            raise ConfigError(f"row_budget must be in (0, 1], got {self.row_budget}")
        if self.partial_saves < 1:
            raise ConfigError(f"partial_saves must be >= 1, got {self.partial_saves}")


def _nbytes(obj: Any) -> int:
    """Bytes of every tensor in a nested structure (what saving it writes, less framing)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def node_shards(table_rows: list[int], n: int) -> list[list[tuple[int, int, int]]]:
    """Per node, its (table, row_lo, row_hi) ranges: the concatenated rows split into n equal ranges."""
    total = sum(table_rows)
    bounds = [round(k * total / n) for k in range(n + 1)]
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    start = 0
    for t, rows in enumerate(table_rows):
        for k in range(n):
            lo, hi = max(bounds[k], start), min(bounds[k + 1], start + rows)
            if lo < hi:
                out[k].append((t, lo - start, hi - start))
        start += rows
    return out


class RecoveryEmulator:
    """Called after every training step; saves, injects failures and recovers per the policy."""

    def __init__(self, trainer: Any, spec: RecoverySpec, steps: int,
                 replay: Callable[[int, int], Any] | None = None) -> None:
        if trainer.backend == "fbgemm":
            raise ConfigError("--recovery: the fbgemm backend keeps its optimizer state inside FBGEMM; use torch or fused")
        self.tr, self.spec, self.steps, self.replay = trainer, spec, steps, replay
        emb = trainer.model.embeddings
        self.rows = [t.rows for t in emb.tables]  # this process's tables
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        self.sparse_keys = [names[id(p)] for p in emb.sparse_parameters()]  # their keys in a model state dict
        # Emulated nodes shard the rows of ALL tables; in a multi-process run each rank handles
        # the parts of a failed node's shard that lie in the tables it holds.
        local = {g: i for i, g in enumerate(trainer.owned)} if trainer.world.world_size > 1 else {
            i: i for i in range(len(self.rows))}
        glob = node_shards([t.rows for t in trainer.spec.tables], spec.emb_nodes)
        self.shards = [[(local[t], lo, hi) for t, lo, hi in node if t in local] for node in glob]
        self.step_s = spec.job_hours * 3600.0 / steps
        cost = spec.cost
        fm = spec.failures or FailureModel(mtbf_s=cost.mtbf_s, seed=spec.seed)
        self.failures = fm.draw(spec.job_hours * 3600.0, spec.emb_nodes) if spec.policy != "none" else []
        self.fail_at: dict[int, list[int]] = {}
        for f in self.failures:
            self.fail_at.setdefault(min(steps, int(f.time_s // self.step_s) + 1), []).append(f.node)
        self.mode = spec.policy
        est: dict[str, float] = {}
        if spec.policy == "full":
            interval_s = young_interval(cost.save_s, cost.mtbf_s)
        elif spec.policy.startswith("cpr"):
            chosen, interval_s, est = choose_policy(spec.target_pls, spec.emb_nodes, cost)
            if chosen == "full":
                self.mode = "full"  # CPR uses partial recovery only when it wins
        else:
            interval_s = math.inf
        self.interval = max(1, round(interval_s / self.step_s)) if math.isfinite(interval_s) else 0
        self.partial_every = max(1, self.interval // spec.partial_saves) if self.mode in ("cpr-mfu", "cpr-ssu") else 0
        self.estimates = est
        self.interval_s = interval_s
        # state
        dev = trainer.device
        self.since = [torch.zeros(r, dtype=torch.int64, device=dev) for r in self.rows]  # updates since last save
        self.counts = [torch.zeros(r, dtype=torch.int64, device=dev) for r in self.rows] if self.mode == "cpr-mfu" else None
        self.buffer: list[set[int]] = [set() for _ in self.rows]
        self.gen = torch.Generator().manual_seed(spec.seed)
        self.snapshot: dict[str, Any] | None = None
        self.snap_step = 0
        self.partial: list[dict[str, torch.Tensor]] | None = None  # per table: ids, values, state
        self.total_updates = 0
        self.lost_updates = 0
        self.bytes_written = 0  # what the saves would write: full snapshots and partial rows
        self.events = {"full_saves": 0, "partial_saves": 0, "partial_rows_saved": 0, "failures": 0,
                       "replayed_steps": 0, "restored_rows": 0}
        self.cost_s = {"save": 0.0, "load": 0.0, "reschedule": 0.0, "lost_compute": 0.0}
        if self.interval:
            self._full_save(0)

    # ------------------------------------------------------------ row views
    def _rows_of(self, t: int, params: list[torch.Tensor], state: list[torch.Tensor] | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Table t's rows in a list laid out like the sparse parameters, and in its row-wise state."""
        i, start, rows = self.tr.model.embeddings.table_location(t)
        return params[i][start : start + rows], (state[i][start : start + rows] if state is not None else None)

    def _views(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight rows of table t, row-wise optimizer state of table t or None) as live views."""
        params = [p.data for p in self.tr.model.embeddings.sparse_parameters()]
        return self._rows_of(t, params, getattr(self.tr.sparse_opt, "state", None))

    def _table_ids(self, inp: Any) -> list[torch.Tensor]:
        sb = inp.sparse
        return [sb.table(t)[0] for t in range(len(self.rows))]

    # ------------------------------------------------------------ saves
    def _full_save(self, step: int) -> None:
        self.snapshot = copy.deepcopy(self.tr.state_dict())
        self.snap_step = step
        for s in self.since:
            s.zero_()
        self.partial = None
        if step > 0:
            self.events["full_saves"] += 1
            self.cost_s["save"] += self.spec.cost.save_s
            self.bytes_written += _nbytes(self.snapshot)

    def _partial_save(self) -> None:
        saved, rows_saved = [], 0
        for t, r in enumerate(self.rows):
            k = max(1, int(self.spec.row_budget * r))
            if self.counts is not None:
                ids = torch.topk(self.counts[t], min(k, r)).indices
            else:
                ids = torch.tensor(sorted(self.buffer[t]), dtype=torch.long)[:k]
                self.buffer[t].clear()
            w, st = self._views(t)
            saved.append({"ids": ids, "values": w[ids].clone(), "state": st[ids].clone() if st is not None else None})
            self.since[t][ids] = 0
            rows_saved += ids.numel()
        self.partial = saved
        self.bytes_written += sum(_nbytes(p) for p in saved)
        self.events["partial_saves"] += 1
        self.events["partial_rows_saved"] += rows_saved
        self.cost_s["save"] += self.spec.cost.save_s * rows_saved / sum(self.rows)

    # ------------------------------------------------------------ the hook
    def after_step(self, step: int, inp: Any) -> None:
        if self.mode == "none":
            return
        ids = self._table_ids(inp)
        for t, i in enumerate(ids):
            self.since[t].index_add_(0, i, torch.ones_like(i))
            self.total_updates += i.numel()
            if self.counts is not None:
                self.counts[t].index_add_(0, i, torch.ones_like(i))
            elif self.mode == "cpr-ssu":
                cap = max(1, int(self.spec.row_budget * self.rows[t]))
                room = cap - len(self.buffer[t])
                if room > 0 and i.numel():
                    pick = torch.randperm(i.numel(), generator=self.gen)[: min(room, max(1, i.numel() // 8))]
                    self.buffer[t].update(i[pick].tolist())
        for node in self.fail_at.get(step, []):
            self._fail(step, node)
        if self.interval and step % self.interval == 0 and step < self.steps:
            self._full_save(step)
        elif self.partial_every and step % self.partial_every == 0 and step < self.steps:
            self._partial_save()

    def _fail(self, step: int, node: int) -> None:
        cost = self.spec.cost
        self.events["failures"] += 1
        assert self.snapshot is not None
        if self.mode == "full":
            lost = step - self.snap_step
            self.tr.load_state_dict(copy.deepcopy(self.snapshot))
            if lost and self.replay is not None:
                self.replay(self.snap_step, step)  # recompute the lost steps: the trainer ends at `step` again
            self.events["replayed_steps"] += lost
            self.cost_s["load"] += cost.load_s
            self.cost_s["reschedule"] += cost.resched_s
            self.cost_s["lost_compute"] += lost * self.step_s
            return
        # partial: restore the failed node's rows from the snapshot (then from the newest partial save)
        model_snap = self.snapshot["model"]
        opt_snap = self.snapshot["sparse_opt"].get("state") if isinstance(self.snapshot["sparse_opt"], dict) else None
        for t, lo, hi in self.shards[node]:
            w, st = self._views(t)
            w_snap, st_snap = self._rows_of(t, [model_snap[k] for k in self.sparse_keys], opt_snap)
            w[lo:hi] = w_snap[lo:hi]
            if st is not None and st_snap is not None:
                st[lo:hi] = st_snap[lo:hi]
            if self.partial is not None:
                p = self.partial[t]
                sel = (p["ids"] >= lo) & (p["ids"] < hi)
                ids = p["ids"][sel]
                w[ids] = p["values"][sel]
                if st is not None and p["state"] is not None:
                    st[ids] = p["state"][sel]
            self.lost_updates += int(self.since[t][lo:hi].sum())
            self.since[t][lo:hi] = 0
            self.events["restored_rows"] += hi - lo
        self.cost_s["load"] += cost.load_s / self.spec.emb_nodes
        self.cost_s["reschedule"] += cost.resched_partial_s

    # ------------------------------------------------------------ report
    def report(self) -> dict[str, Any]:
        """The run's recovery numbers; in a multi-process run, counts are summed over the ranks."""
        total_s = self.steps * self.step_s
        overhead_s = sum(self.cost_s.values())
        if self.tr.world.world_size > 1 and torch.distributed.is_initialized():
            t = torch.tensor([self.lost_updates, self.total_updates, self.bytes_written, self.events["restored_rows"],
                              self.events["partial_rows_saved"]], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            self.lost_updates, self.total_updates, self.bytes_written = int(t[0]), int(t[1]), int(t[2])
            self.events["restored_rows"], self.events["partial_rows_saved"] = int(t[3]), int(t[4])
        return {
            "policy": self.spec.policy, "mode": self.mode, "emb_nodes": self.spec.emb_nodes,
            "job_hours": self.spec.job_hours, "interval_steps": self.interval, "interval_s": self.interval_s,
            "partial_every_steps": self.partial_every,
            "failures": self.events["failures"], "failure_steps": sorted(self.fail_at),
            "pls": self.lost_updates / self.total_updates if self.total_updates else 0.0,
            "expected_pls": (expected_pls(self.interval_s, self.spec.emb_nodes, self.spec.cost.mtbf_s)
                             if self.mode.startswith("cpr") else 0.0),
            "lost_updates": self.lost_updates, "total_updates": self.total_updates,
            "bytes_written": self.bytes_written,
            "overhead_fraction": overhead_s / total_s, "overhead_s": dict(self.cost_s),
            "estimates": self.estimates, **self.events,
        }
