"""Communication cost of a sharded embedding step: a small swappable interface and two curves.

A placement's devices do not exist on this machine, so their collectives are costed with a curve
`all_to_all_ms(bytes_per_rank, world)`: the time of one all-to-all in which every rank sends
`bytes_per_rank` bytes in all to the other ranks (what it keeps for itself is not counted).

- `AlphaBeta` is the latency-bandwidth curve t = alpha x (world - 1) + bytes / bandwidth (a
  pairwise-exchange all-to-all takes world - 1 steps, each paying the latency once).
- `measured_curve()` measures a gloo all-to-all between 2 local processes (torch.distributed,
  fresh interpreters, FileStore rendezvous) over a range of message sizes, fits alpha and bandwidth, and
  caches the fit in a JSON file: kind "measured".
- `topology_curve()` takes the bandwidth from a `Topology` config (intra-host bandwidth when the
  ranks fit on one host, else inter-host) and a stated per-step latency: kind "modelled".

Anything with `kind` and `all_to_all_ms` satisfies `CommModel`; the performance model can hand
its own curves to `measure_plan(comm=...)`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recstack.errors import ConfigError
from recstack.io import read_keyed, write_keyed

# Per-step latency assumed when a Topology (which has bandwidths only) models the collective.
MODEL_LATENCY_S = {"cpu": 50e-6, "gpu": 20e-6}
DEFAULT_SIZES = tuple(2**k for k in range(10, 25, 2))  # 1 KiB .. 16 MiB sent per rank
CURVE_FILE = "comm-gloo-w2.json"
CURVE_FORMAT = "recstack-comm-curve/1"
_memo: dict[str, AlphaBeta] = {}


@runtime_checkable
class CommModel(Protocol):
    """A collective cost curve. `kind` is "measured" or "modelled" (always reported)."""

    kind: str

    def all_to_all_ms(self, bytes_per_rank: float, world: int) -> float: ...


@dataclass(frozen=True)
class AlphaBeta:
    """t(ms) = alpha_ms x (world - 1) + bytes_per_rank / bandwidth; 0 when world <= 1 or no bytes."""

    alpha_ms: float
    bandwidth: float  # bytes/s
    kind: str = "modelled"
    source: str = ""
    points: list[list[float]] = field(default_factory=list)  # measured [bytes_per_rank, ms]

    def all_to_all_ms(self, bytes_per_rank: float, world: int) -> float:
        if world <= 1 or bytes_per_rank <= 0:
            return 0.0
        return self.alpha_ms * (world - 1) + bytes_per_rank / self.bandwidth * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "alpha_ms": self.alpha_ms, "bandwidth_bytes_per_s": self.bandwidth,
                "bandwidth_gb_per_s": self.bandwidth / 1e9, "source": self.source, "points": self.points}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlphaBeta:
        return cls(alpha_ms=float(d["alpha_ms"]), bandwidth=float(d["bandwidth_bytes_per_s"]),
                   kind=str(d.get("kind", "measured")), source=str(d.get("source", "")),
                   points=[list(map(float, p)) for p in d.get("points", [])])


def describe(comm: CommModel) -> dict[str, Any]:
    """What to report about a curve: its kind, and its parameters when it can say."""
    if hasattr(comm, "to_dict"):
        d = dict(comm.to_dict())  # type: ignore[attr-defined]
        d.pop("points", None)
        return d
    return {"kind": comm.kind, "source": type(comm).__name__}


def fit_alpha_beta(sizes: Sequence[float], times_ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of t = alpha + bytes / bandwidth minimising RELATIVE error (small messages
    count as much as large ones); alpha >= 0. Returns (alpha_ms, bandwidth bytes/s)."""
    x = np.asarray(sizes, dtype=np.float64)
    t = np.asarray(times_ms, dtype=np.float64)
    if x.shape != t.shape or x.size < 2 or len(np.unique(x)) < 2:
        raise ValueError("fit_alpha_beta needs at least two distinct message sizes")
    if np.any(t <= 0) or np.any(x < 0):
        raise ValueError("fit_alpha_beta needs positive times and non-negative sizes")
    w = 1.0 / t
    a = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (alpha, slope), *_ = np.linalg.lstsq(a, t * w, rcond=None)
    if alpha < 0:  # latency cannot be negative: refit through the origin
        alpha = 0.0
        slope = float(np.sum(x * t * w * w) / np.sum(x * x * w * w))
    if slope <= 0:  # no measurable size dependence: latency only, bandwidth from the largest message
        slope = 1e-12
    return float(alpha), float(1e3 / slope)


def topology_curve(topology: Any, world: int | None = None) -> AlphaBeta:
    """The modelled curve of a Topology (name, YAML path or object): bandwidth = intra-host
    bandwidth when `world` ranks fit in one host, else inter-host; latency MODEL_LATENCY_S."""
    from recstack.spec import Topology, load_topology

    topo = topology if isinstance(topology, Topology) else load_topology(topology)
    intra = world is None or world <= topo.devices_per_host
    bw = topo.intra_host_bw if intra else topo.inter_host_bw
    lat = MODEL_LATENCY_S[topo.device.kind]
    return AlphaBeta(alpha_ms=lat * 1e3, bandwidth=bw, kind="modelled",
                     source=f"topology {topo.name}: {'intra' if intra else 'inter'}-host bandwidth "
                            f"{bw / 1e9:g} GB/s, assumed latency {lat * 1e6:g} us per step")


# ---------------------------------------------------------------- measured gloo all-to-all


def _a2a_worker(rank: int, world: int, store: str, sizes: list[int], reps: int, warmup: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        rows = []
        for nbytes in sizes:
            n = max(1, nbytes // 4) * world  # floats per rank buffer: nbytes to each peer (and itself)
            send, recv = torch.ones(n), torch.empty(n)
            for _ in range(warmup):
                dist.all_to_all_single(recv, send)
            samples = []
            for _ in range(reps):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_to_all_single(recv, send)
                samples.append((time.perf_counter() - t0) * 1e3)
            tt = torch.tensor(samples, dtype=torch.float64)
            dist.all_reduce(tt, op=dist.ReduceOp.MAX)  # the collective ends when its slowest rank does
            rows.append([float(nbytes // 4 * 4 * (world - 1)), float(tt.median())])
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def measure_gloo_all_to_all(
    sizes: Sequence[int] = DEFAULT_SIZES, reps: int = 15, warmup: int = 3, world: int = 2, timeout_s: float = 120.0,
) -> list[list[float]]:
    """[bytes sent per rank, median ms] of a gloo all_to_all_single among `world` local processes
    (each rank sends `size` bytes to every other rank). The workers are fresh interpreters
    (`python -c`, so nothing depends on how the caller's __main__ is written) meeting at a
    FileStore in a temporary directory. Raises RuntimeError when they cannot run."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="recstack-a2a-") as d:
        store, out = os.path.join(d, "store"), os.path.join(d, "result.json")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = []
        for r in range(world):
            args = json.dumps([r, world, store, list(sizes), reps, warmup, out])
            code = f"import json; from recstack.shard.comm import _a2a_worker; _a2a_worker(*json.loads({args!r}))"
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout_s
        errs = []
        try:
            for p in procs:
                try:
                    _, e = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
                    errs.append(e or "")
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"gloo all-to-all measurement did not finish in {timeout_s:g} s") from None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        if any(p.returncode != 0 for p in procs) or not os.path.exists(out):
            last = next((e.strip().splitlines()[-1] for e in errs if e.strip()), "no output")
            raise RuntimeError(f"gloo all-to-all workers failed (exit codes {[p.returncode for p in procs]}: {last})")
        return json.loads(Path(out).read_text())


def _curve_key() -> dict[str, Any]:
    import torch

    from recstack.machine import machine_key

    return {"torch": torch.__version__, "machine": machine_key(), "world": 2, "backend": "gloo"}


def measured_curve(path: str | Path | None = None, *, refresh: bool = False, sizes: Sequence[int] = DEFAULT_SIZES,
                   reps: int = 15) -> AlphaBeta:
    """The fitted gloo all-to-all curve: read from `path` (a JSON file) when it holds a fit for this
    torch and machine, else measured (about 5-10 s: two processes start and import torch), fitted
    and written there atomically. Without a path the fit is kept for the life of the process."""
    key = _curve_key()
    memo_key = json.dumps(key, sort_keys=True) + str(path)
    if not refresh and memo_key in _memo:
        return _memo[memo_key]
    d = read_keyed(path, key) if path is not None and not refresh else None
    if d is not None and d.get("format") == CURVE_FORMAT:
        try:
            _memo[memo_key] = AlphaBeta.from_dict(d["curve"])
            return _memo[memo_key]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged record: measure again
    points = measure_gloo_all_to_all(sizes, reps=reps)
    alpha, bw = fit_alpha_beta([p[0] for p in points], [p[1] for p in points])
    curve = AlphaBeta(alpha_ms=alpha, bandwidth=bw, kind="measured", points=points,
                      source=f"gloo all_to_all_single, 2 local processes, {len(points)} sizes "
                             f"{_fmt_bytes(points[0][0])}..{_fmt_bytes(points[-1][0])} per rank, median of {reps}")
    if path is not None:
        write_keyed(path, key, format=CURVE_FORMAT, curve=curve.to_dict(), host=platform.node())
    _memo[memo_key] = curve
    return curve


def resolve_comm(comm: str | CommModel, *, world: int, cache_dir: Path | None = None,
                 topology: Any = "cpu-2core", refresh: bool = False) -> tuple[CommModel, str]:
    """A CommModel from "auto" (measured curve, or the topology model when measuring fails),
    "measured" (measured or error), "model" (topology), or a CommModel. Returns (model, note)."""
    if not isinstance(comm, str):
        if not isinstance(comm, CommModel):
            raise ConfigError(f"comm: {type(comm).__name__} has no kind / all_to_all_ms")
        return comm, ""
    if comm not in ("auto", "measured", "model"):
        raise ConfigError(f"--comm must be auto, measured or model, got {comm!r}")
    if comm == "model":
        return topology_curve(topology, world), ""
    path = cache_dir / CURVE_FILE if cache_dir is not None else None
    try:
        return measured_curve(path, refresh=refresh), ""
    except (RuntimeError, OSError, ValueError) as e:
        if comm == "measured":
            raise ConfigError(f"--comm measured: cannot measure the gloo all-to-all here ({e}); "
                              f"use --comm model") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return topology_curve(topology, world), f"communication modelled: measuring the gloo all-to-all failed ({first})"


def _fmt_bytes(n: float) -> str:
    if n <= 0:
        return "0 B"
    k = min(int(math.log(n, 1024)), 4)
    return f"{n / 1024**k:g} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][k]}"


__all__ = ["AlphaBeta", "CommModel", "describe", "fit_alpha_beta", "measure_gloo_all_to_all",
           "measured_curve", "resolve_comm", "topology_curve"]
