"""`recstack trace capture`: PyTorch execution trace + Kineto trace of N training or inference iterations.

Per rank the run directory gets `rank<R>.et.json` (the execution trace, with integral tensors'
value ranges so replay can draw valid indices), `rank<R>.kineto.json` (the profiler trace that
gives every operator its duration, joined by record-function id), optionally
`rank<R>.et_resources/` (the embedding operators' index and offset tensors, with
--save-indices) and `rank<R>.indices.npz` (the captured batch's sparse features); then
`capture.json` with the settings and the measured capture overhead. Iterations are marked with
`ProfilerStep#<i>` record functions, the name profiler tools look for.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recstack.errors import ConfigError, RecstackError
from recstack.io import atomic_dir, atomic_write_json
from recstack.spec import ModelSpec, TrainSpec

ITERATION_PREFIX = "ProfilerStep#"
CAPTURE_FILE = "capture.json"
# ops whose integral inputs (indices, offsets) --save-indices records
INDEX_OPS = ("aten::embedding_bag", "aten::_embedding_bag", "aten::_embedding_bag_forward_only",
             "aten::embedding", "fbgemm::split_embedding_codegen_lookup_sgd_function",
             "fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function")


@dataclass
class CaptureOptions:
    mode: str = "train"  # train | infer
    iterations: int = 3  # captured (profiled) iterations
    timing_iterations: int = 20  # timed without any observer, and again with the ET observer only
    warmup: int = 5
    nproc: int = 1
    device: str = "cpu"
    backend: str = "fused"
    save_indices: bool = False
    seed: int = 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class IterationRunner:
    """One rank's model and pre-built batches; `iteration()` is what gets traced."""

    def __init__(self, spec: ModelSpec, ts: TrainSpec, opts: CaptureOptions, info: Any, device: str) -> None:
        from recstack.data import SyntheticGenerator
        from recstack.train.trainer import Trainer

        self.opts, self.device = opts, device
        self.trainer = Trainer(spec, ts, opts.backend, device, info)
        n = opts.warmup + 2 * opts.timing_iterations + opts.iterations
        gen = SyntheticGenerator(spec, seed=opts.seed)
        self.batches = [self.trainer.prepare(b) for b in gen.batches(ts.batch_size, n)]
        self.k = 0
        if opts.mode == "infer":
            self.trainer.model.eval()

    def batch(self) -> Any:
        b = self.batches[self.k % len(self.batches)]
        self.k += 1
        return b

    def iteration(self) -> None:
        b = self.batch()
        if self.opts.mode == "train":
            self.trainer.step(b)
        else:
            with torch.no_grad():
                self.trainer._logits(b, train=False)

    def timed(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            _sync(self.device)
            t0 = time.perf_counter()
            self.iteration()
            _sync(self.device)
            out.append((time.perf_counter() - t0) * 1e3)
        return out


@contextlib.contextmanager
def _env(**kv: str) -> Any:
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _capture_rank(spec: ModelSpec, ts: TrainSpec, opts: CaptureOptions, out: Path, info: Any,
                  device: str) -> dict[str, Any]:
    from torch.profiler import ExecutionTraceObserver, ProfilerActivity, profile, record_function

    r = IterationRunner(spec, ts, opts, info, device)
    rank = info.rank
    r.timed(opts.warmup)
    plain = r.timed(opts.timing_iterations)
    # the observer alone, into a scratch file: what an always-on ET costs
    with tempfile.TemporaryDirectory() as tmp:
        et = ExecutionTraceObserver()
        et.register_callback(str(Path(tmp) / "et.json"))
        et.start()
        observed = r.timed(opts.timing_iterations)
        et.stop()
        et.unregister_callback()
    env = {"ENABLE_PYTORCH_EXECUTION_TRACE_SAVE_INTEGRAL_TENSOR_RANGE": "1"}
    if opts.save_indices:
        env["ENABLE_PYTORCH_EXECUTION_TRACE_SAVE_INTEGRAL_TENSOR_DATA"] = ",".join(INDEX_OPS)
        b = r.batches[r.k % len(r.batches)]
        sp = b.sparse  # this rank's tables of the first captured batch, table-major
        np.savez_compressed(out / f"rank{rank}.indices.npz", indices=sp.indices.cpu().numpy(),
                            offsets=sp.offsets.cpu().numpy(), num_tables=sp.num_tables, batch_size=sp.batch_size)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    profiled = []
    with _env(**env):
        et = ExecutionTraceObserver()
        et.register_callback(str(out / f"rank{rank}.et.json"))
        if opts.save_indices:
            et.set_extra_resource_collection(True)
        with profile(activities=acts, execution_trace_observer=et, record_shapes=True) as prof:
            for i in range(opts.iterations):
                _sync(device)
                t0 = time.perf_counter()
                with record_function(f"{ITERATION_PREFIX}{i}"):
                    r.iteration()
                _sync(device)
                profiled.append((time.perf_counter() - t0) * 1e3)
        prof.export_chrome_trace(str(out / f"rank{rank}.kineto.json"))
        et.unregister_callback()
    med = statistics.median(plain)
    return {
        "rank": rank,
        "iteration_ms": med,
        "iteration_ms_all": plain,
        "observer_ms": statistics.median(observed),
        "observer_overhead": statistics.median(observed) / med - 1,
        "profiled_ms": statistics.median(profiled),
        "profiled_overhead": statistics.median(profiled) / med - 1,
        "threads": torch.get_num_threads(),
    }


def _meta(config: str, spec: ModelSpec, ts: TrainSpec, opts: CaptureOptions, ranks: list[dict]) -> dict[str, Any]:
    return {
        "config": config, "model": spec.name, "batch_size": ts.batch_size, "options": asdict(opts),
        "world_size": opts.nproc, "torch": torch.__version__,
        "iteration_ms": max(x["iteration_ms"] for x in ranks),
        "observer_overhead": max(x["observer_overhead"] for x in ranks),
        "profiled_overhead": max(x["profiled_overhead"] for x in ranks),
        "ranks": ranks,
        "files": {x["rank"]: {"et": f"rank{x['rank']}.et.json", "kineto": f"rank{x['rank']}.kineto.json"}
                  for x in ranks},
    }


def _worker(rank: int, payload: dict[str, Any], world: int, rdv: str, out: str, errdir: str) -> None:
    from recstack.train.dist import DistInfo

    spec = ModelSpec.model_validate(payload["spec"])
    ts = TrainSpec.model_validate(payload["ts"])
    opts = CaptureOptions(**payload["opts"])
    try:
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        device = opts.device if not opts.device.startswith("cuda") else f"cuda:{rank}"
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        store = dist.FileStore(rdv, world)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", store=store, rank=rank,
                                world_size=world)
        res = _capture_rank(spec, ts, opts, Path(out), DistInfo(rank, world, rank), device)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, res)
        if rank == 0:
            atomic_write_json(Path(out) / CAPTURE_FILE, _meta(payload["config"], spec, ts, opts, gathered))
    except RecstackError as e:
        Path(errdir, f"rank{rank}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def capture(config: str, spec: ModelSpec, ts: TrainSpec, out: str | Path, opts: CaptureOptions) -> dict[str, Any]:
    """Capture `opts.iterations` iterations into `out` (replaced only when the capture completes)."""
    from recstack.train.dist import DistInfo, init_group, shutdown_group, under_torchrun

    if opts.mode not in ("train", "infer"):
        raise ConfigError(f"--mode must be train or infer, got {opts.mode!r}")
    for name in ("iterations", "timing_iterations", "nproc"):
        if getattr(opts, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    if opts.device.startswith("cuda") and torch.cuda.device_count() < opts.nproc:
        raise ConfigError(f"--device {opts.device}: {torch.cuda.device_count()} CUDA devices, need {opts.nproc}")
    out = Path(out)
    if under_torchrun():  # one rank of a torchrun job: every rank writes its files into `out`
        info = init_group(opts.device)
        opts.nproc = info.world_size
        out.mkdir(parents=True, exist_ok=True)
        device = opts.device if not opts.device.startswith("cuda") else f"cuda:{info.local_rank}"
        try:
            res = _capture_rank(spec, ts, opts, out, info, device)
            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, res)
            meta = _meta(config, spec, ts, opts, gathered)
            if info.rank == 0:
                atomic_write_json(out / CAPTURE_FILE, meta)
            return meta
        finally:
            shutdown_group()
    with atomic_dir(out) as tmp:
        if opts.nproc == 1:
            res = _capture_rank(spec, ts, opts, tmp, DistInfo(), opts.device)
            atomic_write_json(tmp / CAPTURE_FILE, _meta(config, spec, ts, opts, [res]))
        else:
            _spawn(config, spec, ts, opts, tmp)
    return json.loads((out / CAPTURE_FILE).read_text())


def _spawn(config: str, spec: ModelSpec, ts: TrainSpec, opts: CaptureOptions, out: Path) -> None:
    import torch.multiprocessing as mp

    from recstack import errors

    payload = {"spec": spec.model_dump(), "ts": ts.model_dump(), "opts": asdict(opts), "config": config}
    with tempfile.TemporaryDirectory(prefix="recstack-trace-") as tmp:
        try:
            mp.spawn(_worker, args=(payload, opts.nproc, str(Path(tmp) / "rdv"), str(out), tmp),
                     nprocs=opts.nproc, join=True)
        except mp.ProcessRaisedException as e:
            for f in sorted(Path(tmp).glob("rank*.json")):
                info = json.loads(f.read_text())
                raise getattr(errors, info["type"], RecstackError)(info["message"]) from None
            raise RuntimeError(f"a capture worker failed:\n{e}") from None
