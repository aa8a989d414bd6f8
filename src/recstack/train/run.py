"""`train()`: validate inputs, run the loop (one process, spawned workers, or under torchrun),
and write the run directory from rank 0."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from recstack.data.store import Store
from recstack.errors import ConfigError, DataError, RecstackError
from recstack.spec import ModelSpec, TrainSpec
from recstack.train.checkpoint import BackgroundSaver, CheckpointStore
from recstack.train.dist import DistInfo, init_group, place_tables, shutdown_group, under_torchrun
from recstack.train.failures import CostModel, FailureModel
from recstack.train.recovery import RecoveryEmulator, RecoverySpec
from recstack.train.rundir import PLOT, SUMMARY, RunDir, plot_learning_curve
from recstack.train.schedule import lr_at
from recstack.train.trainer import Trainer, _is_tty, default_eval_every, prefetch, train_batches
from recstack.ui import console

if TYPE_CHECKING:
    from recstack.sustain.meters import EnergyMeter, EnergyReport


@dataclass
class RunOptions:
    """How to run (as opposed to what to train, which is ModelSpec + TrainSpec)."""

    backend: str = "torch"
    device: str = "cpu"
    nproc: int = 1
    log_every: int | None = None  # steps between train-loss rows; default: about 100 rows per run
    eval_samples: int | None = None  # cap on val samples per periodic evaluation (final test: all)
    progress: bool = True
    plan: dict[str, int] | None = None
    checkpoint_every: int | None = None  # steps between full checkpoints (None: no checkpoints)
    checkpoint_dir: str | None = None  # default: RUN_DIR/checkpoints
    keep_checkpoints: int = 3
    resume: bool = False  # continue from the newest good checkpoint
    recovery: dict[str, Any] | None = None  # RecoverySpec fields: emulated failures and recovery policy
    energy: bool = False  # meter the run's energy into summary["energy"]
    energy_hardware: str | None = None  # hardware config for the meter's estimates (default: detected)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in config.yaml only


# ---------------------------------------------------------------- validation
def check_device(device: str, nproc: int = 1) -> str:
    """'cpu', 'cuda' or 'cuda:N'; a clear error when CUDA is asked for but absent."""
    if device == "cpu":
        return device
    if not device.startswith("cuda"):
        raise ConfigError(f"--device: {device!r} is not one of cpu, cuda")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine (torch sees no GPU)")
    if nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc}: only {torch.cuda.device_count()} CUDA devices on this machine")
    return device


def check_store(spec: ModelSpec, store: Store) -> None:
    """The store must fit the model: same dense width, same number of tables, ids within rows."""
    where = str(store.path)
    if store.num_dense != spec.dense_features:
        raise ConfigError(
            f"{where}: store has {store.num_dense} dense features but model {spec.name!r} expects "
            f"dense_features={spec.dense_features}"
        )
    if len(store.tables) != spec.num_tables:
        raise ConfigError(
            f"{where}: store has {len(store.tables)} tables but model {spec.name!r} has {spec.num_tables}"
        )
    for st, t in zip(store.tables, spec.tables):
        if st.rows > t.rows:
            raise ConfigError(
                f"{where}: table {st.name!r} has {st.rows} rows in the store but model table {t.name!r} has "
                f"{t.rows} (check --scale)"
            )
    want = 1 if spec.family != "mtwnd" else spec.num_tasks
    if store.num_labels != want:
        raise ConfigError(
            f"{where}: store has {store.num_labels} label columns but the model predicts {want}"
        )
    for split in ("train",):
        store.split_range(split)


def teacher_auc_of(store: Store, split: str) -> float | None:
    """The generator's ceiling AUC from the store metadata (a number, or one per split)."""
    t = store.meta.get("teacher_auc")
    if isinstance(t, dict):
        t = t.get(split, t.get("test", next(iter(t.values()), None)))
    return float(t) if isinstance(t, int | float) else None


def resolve_steps(store: Store, ts: TrainSpec) -> int:
    if ts.steps is not None:
        return ts.steps
    n = store.num_batches("train", ts.batch_size, drop_last=True)
    if n == 0:
        lo, hi = store.split_range("train")
        raise DataError(
            f"{store.path}: train split has {hi - lo} samples, fewer than batch size {ts.batch_size}"
        )
    return n


def _eval_split(store: Store, prefer: tuple[str, ...]) -> str | None:
    for s in prefer:
        if s in store.splits and store.splits[s][1] > store.splits[s][0]:
            return s
    return None


# ---------------------------------------------------------------- checkpoints and resume
def _checkpointing(
    trainer: Trainer, store: Store, out: Path | None, options: RunOptions, steps: int
) -> tuple[CheckpointStore | None, int, dict[str, Any] | None]:
    """(checkpoint store or None, first step to run, what was resumed or None).

    With `options.resume`, the newest checkpoint that verifies is loaded into `trainer` (torn or
    corrupt ones are skipped, each reason printed); with none, the run starts from step 0. With
    several processes each rank has its own store under root/rankN, and all ranks resume from
    the newest step that loads on every rank.
    """
    if options.checkpoint_every is not None and options.checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {options.checkpoint_every}")
    if not options.checkpoint_every and not options.resume:
        return None, 0, None
    if options.checkpoint_dir is not None:
        root = Path(options.checkpoint_dir)
    elif out is not None:
        root = out / "checkpoints"
    else:
        raise ConfigError("--checkpoint-every / --resume need a run directory (--out) or --checkpoint-dir")
    world = trainer.world
    ckpt = CheckpointStore(root / f"rank{world.rank}" if world.world_size > 1 else root, keep=options.keep_checkpoints)
    if not options.resume:
        return ckpt, 0, None
    _check_world(root, ckpt, world)
    ckpt.clean()  # hidden leftovers of a write that was interrupted
    got = ckpt.load_latest(on_skip=lambda why: print(f"resume: skipping a checkpoint: {why}", file=sys.stderr),
                           agree=_all_gather if world.world_size > 1 else None)
    resumed: dict[str, Any] = {"step": 0, "checkpoint": None, "skipped": list(ckpt.skipped)}
    if got is None:
        if world.is_main:
            print(f"resume: no good checkpoint in {root}; starting from step 0", file=sys.stderr)
        return ckpt, 0, resumed
    info, parts = got
    error = None
    try:
        want = {"model": trainer.spec.name, "seed": trainer.ts.seed, "batch_size": trainer.ts.batch_size}
        for key, value in want.items():
            if key in info.meta and info.meta[key] != value:
                raise ConfigError(f"checkpoint was written with {key}={info.meta[key]!r}, this run has {key}={value!r}")
        trainer.load_state_dict(parts["trainer"])  # checks rank, placement, embedding backend and fit itself
        if trainer.step_count > steps:
            raise ConfigError(f"checkpoint is at step {trainer.step_count}, past this run's {steps} steps")
    except ConfigError as e:
        error = f"{info.path}: {e}"
    if world.world_size > 1:  # every rank stops with the first rank's error, none waits in a collective
        error = next((e for e in _all_gather(error) if e is not None), None)
    if error is not None:
        raise ConfigError(error)
    resumed.update(step=trainer.step_count, checkpoint=info.path.name)
    return ckpt, trainer.step_count, resumed


def _all_gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a collective: all ranks call it in the same order)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _check_world(root: Path, ckpt: CheckpointStore, world: DistInfo) -> None:
    """Refuse to resume checkpoints written by another number of processes instead of silently
    starting over. One process keeps its checkpoints in root, several one store each in
    root/rankN (which may be node-local disks: each rank looks at its own, then they agree)."""
    written = None
    if world.world_size == 1:
        ranks = [p for p in root.glob("rank*") if re.fullmatch(r"rank\d+", p.name)] if root.is_dir() else []
        if ranks and not ckpt.checkpoints():  # what the rank stores record, not how many are here
            recorded = {c.meta.get("world_size") for r in ranks for c in CheckpointStore(r).checkpoints()}
            written = max(recorded - {None}, default=len(ranks))
    else:
        sizes = {c.meta.get("world_size") for c in ckpt.checkpoints()} - {None}
        if sizes:
            written = max(sizes)
        elif not ckpt.root.exists() and root.is_dir() and any(p.name.startswith("step-") for p in root.iterdir()):
            written = 1
        written = next((n for n in _all_gather(written) if n is not None and n != world.world_size), None)
    if written is not None and written != world.world_size:
        n = "1 process" if written == 1 else f"{written} processes"
        raise ConfigError(f"{root}: checkpoints of a run with {n}; resume it with --nproc {written}")


def _recovery(trainer: Trainer, store: Store, options: RunOptions, steps: int, start: int) -> RecoveryEmulator | None:
    """The failure/recovery emulator for `options.recovery`, or None when not asked for."""
    if not options.recovery or options.recovery.get("policy", "none") == "none":
        return None
    if start:
        raise ConfigError("--recovery with --resume: the emulation runs from step 0 (start a new run directory)")
    rs = dict(options.recovery)
    failures, mtbf = rs.pop("failures_file", None), rs.pop("mtbf_s", None)
    seed = int(rs.pop("seed", trainer.ts.seed))
    cost = CostModel(mtbf_s=mtbf) if mtbf else CostModel()
    # No trace: RecoveryEmulator draws exponential failures with the cost model's MTBF.
    fm = FailureModel.from_file(failures, seed) if failures else None
    spec = RecoverySpec(**rs, seed=seed, failures=fm, cost=cost)
    ts = trainer.ts

    def replay(first: int, last: int) -> None:
        for inp in train_batches(store, ts, last, ts.seed, first):
            trainer.step(trainer.prepare(inp))

    return RecoveryEmulator(trainer, spec, steps, replay)


# ---------------------------------------------------------------- the loop
def fit(trainer: Trainer, store: Store, out: Path | None, options: RunOptions) -> dict[str, Any]:
    """Train for ts.steps (default one epoch), evaluate, and (rank 0) write the run directory."""
    ts, world = trainer.ts, trainer.world
    main = world.is_main
    steps = resolve_steps(store, ts)
    eval_every = ts.eval_every or default_eval_every(steps)
    log_every = options.log_every or max(1, steps // 100)
    val_split = _eval_split(store, ("val",))
    final_split = _eval_split(store, ("test", "val")) or "train"
    teacher = teacher_auc_of(store, final_split)
    ckpt, start, resumed = _checkpointing(trainer, store, out, options, steps)
    rd = RunDir(out) if (out is not None and main) else None
    if rd is not None:
        opts = {**asdict(options), "steps": steps, "world_size": world.world_size, "data": str(store.path)}
        opts.pop("extra")
        opts.update(options.extra)
        rd.start(trainer.spec, ts, opts, resume_step=start if resumed is not None else None)
    saver = BackgroundSaver(ckpt) if ckpt is not None and options.checkpoint_every else None
    emu = _recovery(trainer, store, options, steps, start)
    ckpt_meta = {"model": trainer.spec.name, "seed": ts.seed, "batch_size": ts.batch_size, "steps": steps,
                 "data": str(store.path), "world_size": world.world_size}

    progress = None
    if main and options.progress and _is_tty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(), transient=True, console=console(stderr=True),
        )
        task = progress.add_task("train", total=steps, completed=start, info="")
        progress.start()

    t_start = time.perf_counter()
    t_train = 0.0
    acc = torch.zeros((), dtype=torch.float32, device=trainer.device)
    acc_n = 0
    last_loss = float("nan")
    samples = 0
    evals: list[dict[str, Any]] = []
    w = world.world_size
    batches = None
    try:
        t0 = time.perf_counter()
        batches = prefetch(train_batches(store, ts, steps, ts.seed, start), trainer.prepare)
        for inp in batches:
            acc += trainer.step(inp)
            acc_n += 1
            samples += inp.global_batch
            step = trainer.step_count
            if emu is not None:
                emu.after_step(step, inp)
            # the last step is saved too: the trained state is on disk and --resume with more steps extends it
            if saver is not None and (step % options.checkpoint_every == 0 or step == steps):  # type: ignore[operator]
                saver.submit(step, {"trainer": trainer.state_dict()}, meta=ckpt_meta)
            is_eval = step % eval_every == 0 or step == steps
            if step % log_every == 0 or step == steps or is_eval:
                tot = acc.detach().clone()
                if w > 1:
                    dist.all_reduce(tot)
                last_loss = float(tot) / (acc_n * w)
                now = time.perf_counter()
                t_train += now - t0
                sps = samples / t_train if t_train > 0 else float("nan")
                if rd is not None:
                    rd.log({"kind": "train", "step": step, "loss": last_loss, "lr": lr_at(step - 1, ts),
                            "samples": samples, "samples_per_s": sps})
                if progress is not None:
                    progress.update(task, completed=step, info=f"loss {last_loss:.4f}  {sps:,.0f} samples/s")
                acc.zero_()
                acc_n = 0
                if is_eval and val_split is not None and step != steps:
                    m = trainer.evaluate(store, val_split, options.eval_samples)
                    if main:
                        evals.append({"kind": "val", "step": step, **m})
                        if rd is not None:
                            rd.log({k: v for k, v in evals[-1].items() if k != "auc_per_task"})
                t0 = time.perf_counter()
            elif progress is not None:
                progress.update(task, completed=step)
        if val_split is not None:
            m = trainer.evaluate(store, val_split, options.eval_samples)
            if main:
                evals.append({"kind": "val", "step": trainer.step_count, **m})
                if rd is not None:
                    rd.log({k: v for k, v in evals[-1].items() if k != "auc_per_task"})
        final = trainer.evaluate(store, final_split)
        if saver is not None:
            saver.close()
    finally:
        if batches is not None:
            batches.close()  # stops the loader thread on errors and Ctrl-C too
        if progress is not None:
            progress.stop()
        if saver is not None:
            with contextlib.suppress(Exception):
                saver.wait()  # a write in flight is finished (or fails) before we leave
    seconds = time.perf_counter() - t_start
    rec_report = emu.report() if emu is not None else None  # every rank: sums counts over ranks
    ckpt_stats = saver.stats if saver is not None else None
    if ckpt_stats is not None and w > 1:  # bytes of all ranks; time of the slowest
        every = _all_gather(ckpt_stats)
        ckpt_stats = {k: (sum if k == "bytes" else max)(st[k] for st in every) for k in ckpt_stats}
    if not main:
        return {}
    summary: dict[str, Any] = {
        "model": trainer.spec.name,
        "auc": final.get("auc"),
        "logloss": final.get("logloss"),
        "ne": final.get("ne"),
        "eval_split": final_split,
        "eval_samples": final.get("samples"),
        "teacher_auc": teacher,
        "auc_gap": (teacher - final["auc"]) if teacher is not None and final.get("auc") is not None else None,
        "val_auc": evals[-1].get("auc") if evals else None,
        "final_train_loss": last_loss,
        "steps": trainer.step_count,
        "samples": samples,
        "samples_per_s": samples / t_train if t_train > 0 else None,
        "train_seconds": t_train,
        "seconds": seconds,
        "world_size": w,
        "backend": trainer.backend,
        "device": str(trainer.device.type),
        "optimizer": ts.optimizer,
        "precision": ts.precision,
        "lr": ts.lr,
        "batch_size": ts.batch_size,
        "seed": ts.seed,
        "placement": {t.name: r for t, r in zip(trainer.spec.tables, trainer.placement)} if w > 1 else None,
    }
    if "auc_per_task" in final:
        summary["auc_per_task"] = final["auc_per_task"]
    if resumed is not None:
        summary["resumed"] = resumed
    if rec_report is not None:
        summary["recovery"] = rec_report
    if ckpt_stats is not None:
        st = ckpt_stats
        summary["checkpoints"] = {
            "every": options.checkpoint_every, "saves": st["saves"], "bytes": st["bytes"],
            "blocked_s": st["blocked_s"] + st["snapshot_s"], "write_s": st["write_s"],
            "blocked_fraction": (st["blocked_s"] + st["snapshot_s"]) / seconds if seconds > 0 else None,
            "dir": str(ckpt.root.parent if w > 1 else ckpt.root) if ckpt is not None else None,
        }
    if rd is not None:
        rd.log({"kind": final_split if final_split != "val" else "final", "step": trainer.step_count,
                **{k: v for k, v in final.items() if k != "auc_per_task"}})
        plot_learning_curve(rd.rows(), rd.path / PLOT, teacher, title=f"{trainer.spec.name} ({w} proc)")
        summary["plot"] = PLOT
        rd.finish(summary)
    return summary


# ---------------------------------------------------------------- entry points
def _families() -> dict:
    from recstack.models import FAMILIES

    return FAMILIES


def dist_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def train(
    spec: ModelSpec,
    train_spec: TrainSpec,
    data: Store | str | Path,
    out: str | Path | None,
    device: str = "cpu",
    backend: str = "torch",
    progress: bool = True,
    nproc: int = 1,
    plan: dict[str, int] | None = None,
    log_every: int | None = None,
    eval_samples: int | None = None,
    extra: dict[str, Any] | None = None,
    checkpoint_every: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    recovery: dict[str, Any] | None = None,
    energy: bool = False,
    energy_hardware: str | None = None,
) -> dict[str, Any]:
    """Train `spec` on a store and return the summary (also written to `out`/summary.json).

    nproc > 1 spawns that many local workers (gloo on CPU, NCCL on CUDA) running hybrid
    parallelism; under torchrun the current process is one rank of the job. `energy` meters
    the job (recstack.sustain.meters) into summary["energy"].
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    device = check_device(device, nproc)
    store = data if isinstance(data, Store) else Store(data)
    check_store(spec, store)
    if spec.family not in _families():
        raise ConfigError(f"family: unknown model family {spec.family!r}")
    place_tables(spec.tables, nproc if not under_torchrun() else dist_world(), plan)  # validates the plan
    opts = RunOptions(backend=backend, device=device, nproc=nproc, log_every=log_every,
                      eval_samples=eval_samples, progress=progress, plan=plan, extra=dict(extra or {}),
                      checkpoint_every=checkpoint_every, resume=resume,
                      checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
                      recovery=dict(recovery) if recovery else None,
                      energy=energy, energy_hardware=energy_hardware)
    meter = _energy_meter(opts) if energy else None
    out_p = Path(out) if out is not None else None
    if out_p is not None and int(os.environ.get("RANK", "0")) == 0:
        (out_p / SUMMARY).unlink(missing_ok=True)  # an earlier run's result must not outlive a failed one
    if under_torchrun():
        return _rank_main(spec, train_spec, store.path, out_p, opts, None)
    with meter if meter is not None else contextlib.nullcontext():
        if nproc == 1:
            summary = fit(Trainer(spec, train_spec, backend, device), store, out_p, opts)
        else:
            summary = _spawn(spec, train_spec, store.path, out_p, opts)
    if meter is not None and meter.report is not None and summary:
        summary["energy"] = energy_summary(meter.report, summary.get("samples"), nproc)
        if out_p is not None:
            RunDir(out_p).finish(summary)
    return summary


def _energy_meter(opts: RunOptions) -> EnergyMeter:
    """The meter for `opts`: validated before training starts, metering the GPUs the run uses.

    It runs in this process around the whole job, so spawned workers count once joined (their
    CPU time is the parent's children time). Under torchrun each rank is a separate job step, and
    a meter in one rank would miss the others: refused.
    """
    from recstack.sustain.meters import EnergyMeter

    if under_torchrun():
        raise ConfigError("--energy: not supported under torchrun (use --nproc N, which meters all workers)")
    gpus: list[int] | bool = False
    if opts.device.startswith("cuda"):
        gpus = list(range(opts.nproc)) if opts.nproc > 1 else [int(opts.device.partition(":")[2] or 0)]
    return EnergyMeter(opts.energy_hardware, gpus=gpus)


def energy_summary(report: EnergyReport, samples: int | None, nproc: int = 1) -> dict[str, Any]:
    """report.to_dict() plus joules per training sample and what the interval covered."""
    d = report.to_dict()
    d["per_sample_j"] = d["total_j"] / samples if samples else None
    d["scope"] = "model set-up, training and evaluation" + (
        f", with the start-up of {nproc} worker processes" if nproc > 1 else "")
    return d


def _rank_main(spec: ModelSpec, ts: TrainSpec, data: Path, out: Path | None, opts: RunOptions,
               rendezvous: tuple[int, int, str] | None) -> dict[str, Any]:
    """One rank: join the group, train, leave. `rendezvous` = (rank, world, file) when spawned."""
    if rendezvous is not None:
        rank, world, path = rendezvous
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        store_ = dist.FileStore(path, world)
        device = opts.device if not opts.device.startswith("cuda") else f"cuda:{rank}"
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", store=store_,
                                rank=rank, world_size=world)
        info = DistInfo(rank, world, rank)
    else:
        info = init_group(opts.device)
        device = opts.device if not opts.device.startswith("cuda") else f"cuda:{info.local_rank}"
    try:
        trainer = Trainer(spec, ts, opts.backend, device, info, opts.plan)
        return fit(trainer, Store(data), out, opts)
    finally:
        shutdown_group()


def _worker(rank: int, payload: dict[str, Any], world: int, rdv: str, errdir: str) -> None:
    spec = ModelSpec.model_validate(payload["spec"])
    ts = TrainSpec.model_validate(payload["ts"])
    opts = RunOptions(**payload["opts"])
    out = Path(payload["out"]) if payload["out"] is not None else None
    try:
        _rank_main(spec, ts, Path(payload["data"]), out, opts, (rank, world, rdv))
    except RecstackError as e:
        Path(errdir, f"rank{rank}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise


def _spawn(spec: ModelSpec, ts: TrainSpec, data: Path, out: Path | None, opts: RunOptions) -> dict[str, Any]:
    """Run `opts.nproc` local ranks with torch.multiprocessing (spawn) and a file rendezvous."""
    import torch.multiprocessing as mp

    from recstack import errors

    payload = {"spec": spec.model_dump(), "ts": ts.model_dump(), "opts": asdict(opts),
               "data": str(data), "out": str(out) if out is not None else None}
    with tempfile.TemporaryDirectory(prefix="recstack-dist-") as tmp:
        rdv = str(Path(tmp) / "rendezvous")
        try:
            mp.spawn(_worker, args=(payload, opts.nproc, rdv, tmp), nprocs=opts.nproc, join=True)
        except mp.ProcessRaisedException as e:
            for f in sorted(Path(tmp).glob("rank*.json")):
                info = json.loads(f.read_text())
                cls = getattr(errors, info["type"], RecstackError)
                raise cls(info["message"]) from None
            raise RuntimeError(f"a training worker failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            raise RuntimeError(f"a training worker died: {e}") from None
    if out is None:
        return {}
    p = out / "summary.json"
    return json.loads(p.read_text()) if p.exists() else {}
