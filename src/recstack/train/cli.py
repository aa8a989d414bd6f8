"""`recstack train` and `recstack demo`: parse, validate at the boundary, call recstack.train, print.

Both commands are plain functions that recstack.cli registers; `python -m recstack.train.worker`
exposes `train` on its own for torchrun.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from recstack.errors import ConfigError, DataError
from recstack.ui import console as ui_console

DEMO_CONFIG = "dlrm-demo"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_result(summary: dict[str, Any], out: Path | None, console: Console | None = None) -> None:
    """The end-of-run table: accuracy beside the teacher ceiling, throughput, where results are."""
    console = console or ui_console()
    t = Table(title=f"{summary.get('model', '')}: {summary.get('eval_split', 'test')} results",
              box=box.SIMPLE_HEAD, show_header=False)
    t.add_column("metric")
    t.add_column("value", justify="right", overflow="fold")
    t.add_row("AUC", _fmt(summary.get("auc")))
    if summary.get("teacher_auc") is not None:
        t.add_row("teacher AUC (ceiling)", _fmt(summary["teacher_auc"]))
        t.add_row("gap to teacher", _fmt(summary.get("auc_gap")))
    t.add_row("log loss", _fmt(summary.get("logloss")))
    t.add_row("normalised entropy", _fmt(summary.get("ne")))
    t.add_row("steps x batch", f"{summary.get('steps')} x {summary.get('batch_size')}")
    sps = summary.get("samples_per_s")
    t.add_row("train samples/s", f"{sps:,.0f}" if sps else "-")
    t.add_row("processes / backend", f"{summary.get('world_size')} / {summary.get('backend')}")
    if summary.get("precision", "fp32") != "fp32":
        t.add_row("precision", f"{summary['precision']} autocast")
    t.add_row("wall time", f"{summary.get('seconds', 0):.1f} s")
    rec = summary.get("recovery")
    if rec:
        t.add_row("recovery", f"{rec['policy']} ({rec['mode']}), {rec['emb_nodes']} embedding nodes")
        t.add_row("emulated failures", f"{rec['failures']} in {rec['job_hours']:g} h")
        t.add_row("PLS incurred / expected", f"{rec['pls']:.4f} / {rec['expected_pls']:.4f}")
        t.add_row("checkpoint overhead", f"{rec['overhead_fraction']:.2%}")
    ck = summary.get("checkpoints")
    if ck:
        t.add_row("checkpoints", f"{ck['saves']} x {ck['bytes'] / max(1, ck['saves']) / 2**20:.1f} MiB, "
                  f"training blocked {ck['blocked_s']:.2f} s")
    if summary.get("resumed"):
        t.add_row("resumed from", f"step {summary['resumed']['step']}")
    en = summary.get("energy")
    if en:
        t.add_row("energy", _energy_line(en))
    if out is not None:
        t.add_row("run directory", str(out))
    console.print(t)


def _energy_line(en: dict[str, Any]) -> str:
    """'123.4 J (estimated: cpu 123.4 J), 0.0643 J/sample': the method always stands beside the number."""
    mixed = en["method"] == "mixed"
    parts = ", ".join(f"{name} {c['joules']:,.1f} J" + (f" {c['method']}" if mixed else "")
                      for name, c in en["components"].items())
    per = f", {en['per_sample_j']:.3g} J/sample" if en.get("per_sample_j") is not None else ""
    return f"{en['total_j']:,.1f} J ({en['method']}: {parts}){per}"


def _synth_data(spec, data_dir: Path, samples: int, seed: int, config: str, scale: float,
                progress: bool = False) -> Path:
    """Synthesise a store for `spec` into `data_dir`, reusing one made with the same settings."""
    from recstack.data.synth import synthesize

    meta_p = data_dir / "meta.json"
    if meta_p.exists():
        try:
            meta = json.loads(meta_p.read_text())
            syn = meta.get("synthetic") or {}
            same = (
                meta.get("complete") and meta.get("num_samples") == samples and syn.get("seed") == seed
                and syn.get("model") == spec.name and syn.get("scale") == scale
                and [t["rows"] for t in meta.get("tables", [])] == [t.rows for t in spec.tables]
            )
            if same:
                return data_dir
        except (OSError, ValueError):
            pass
    synthesize(spec, data_dir, samples, seed=seed, config_name=config, scale=scale,
               progress=progress and _stderr_tty())
    return data_dir


def _stderr_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _read_plan(plan: Path | None) -> dict[str, int] | None:
    if plan is None:
        return None
    from recstack.train.dist import load_plan

    return load_plan(plan)


_Opt = typer.Option
ConfigArg = Annotated[
    str, typer.Argument(help="Shipped model config name (see `recstack models list`) or a YAML file.")
]
OutOpt = Annotated[Path, _Opt("--out", help="Run directory: config.yaml, metrics.jsonl, summary.json, plot.")]
DataOpt = Annotated[Path | None, _Opt("--data", help="Preprocessed store directory.")]
SynthOpt = Annotated[bool, _Opt("--synthetic", help="Synthesise data for the config into RUN_DIR/data.")]
ScaleOpt = Annotated[float, _Opt("--scale", help="Multiply every table's rows by this.")]
NprocOpt = Annotated[
    int, _Opt("--nproc", help="Local processes: DDP for the MLPs, embedding tables split across ranks.")
]
DeviceOpt = Annotated[str, _Opt("--device", help="cpu or cuda.")]
StepsOpt = Annotated[int | None, _Opt("--steps", help="Training steps (default: config, else one epoch).")]
BatchOpt = Annotated[int | None, _Opt("--batch-size", help="Global batch size.")]
SeedOpt = Annotated[int | None, _Opt("--seed", help="Seed for initialisation, shuffling and synthetic data.")]
LrOpt = Annotated[float | None, _Opt("--lr", help="Learning rate.")]
OptimOpt = Annotated[str | None, _Opt("--optimizer", help="sgd or adagrad (row-wise for embeddings).")]
# All tables of one dim in one lookup: the same model as per-table EmbeddingBags (results equal up to
# float rounding), 7-58% more samples/s on CPU (dlrm-demo, dlrm-kaggle, rmc2; docs/benchmarks.md).
DEFAULT_BACKEND = "fused"
BackendOpt = Annotated[str, _Opt("--backend", help="Embedding backend: fused (all tables of a dim in one lookup), torch (one EmbeddingBag per table) or fbgemm. Same model and results up to float rounding; fused is the fastest on CPU.")]
PrecisionOpt = Annotated[str | None, _Opt("--precision", help="fp32, or bf16: MLPs and interaction under bfloat16 autocast (weights, embeddings, optimiser state and loss stay fp32). Default: the config's, else fp32.")]
SamplesOpt = Annotated[int | None, _Opt("--samples", help="Samples to synthesise with --synthetic.")]
EvalOpt = Annotated[int | None, _Opt("--eval-every", help="Steps between validation runs.")]
LogOpt = Annotated[int | None, _Opt("--log-every", help="Steps between train-loss rows in metrics.jsonl.")]
PlanOpt = Annotated[Path | None, _Opt("--plan", help="Table placement: a table-wise plan from `recstack shard plan`, or JSON {table_name: rank}.")]
ProgressOpt = Annotated[bool, _Opt("--progress/--no-progress", help="Progress bar on stderr (TTY only).")]
CkptEveryOpt = Annotated[
    int | None, _Opt("--checkpoint-every", help="Steps between full checkpoints (atomic, checksummed, background); the last step is saved too.")
]
CkptDirOpt = Annotated[Path | None, _Opt("--checkpoint-dir", help="Checkpoint directory (default RUN_DIR/checkpoints).")]
ResumeOpt = Annotated[
    bool, _Opt("--resume", help="Continue RUN_DIR from its newest good checkpoint (same data order).")
]
RecoveryOpt = Annotated[
    str, _Opt("--recovery", help="Emulated failures and recovery: none, full, cpr, cpr-mfu, cpr-ssu.")
]
EmbNodesOpt = Annotated[int, _Opt("--emb-nodes", help="Emulated embedding nodes the tables are sharded over.")]
MtbfOpt = Annotated[
    float | None, _Opt("--mtbf", help="Cluster mean time between failures, seconds (default 8 h).")
]
FailuresOpt = Annotated[Path | None, _Opt("--failures", help="Failure trace: one 'TIME_S [NODE]' per line.")]
PlsOpt = Annotated[float, _Opt("--target-pls", help="CPR's target portion of lost samples.")]
JobHoursOpt = Annotated[float, _Opt("--job-hours", help="Production training time the run stands for.")]
EnergyOpt = Annotated[
    bool, _Opt("--energy", help="Meter energy (RAPL, NVML, else a labelled estimate) into summary.json.")
]
EnergyHwOpt = Annotated[
    str | None, _Opt("--energy-hardware", help="Hardware config for --energy estimates (default: detected).")
]


def train(
    config: ConfigArg,
    out: OutOpt,
    data: DataOpt = None,
    synthetic: SynthOpt = False,
    scale: ScaleOpt = 1.0,
    nproc: NprocOpt = 1,
    device: DeviceOpt = "cpu",
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    lr: LrOpt = None,
    optimizer: OptimOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    precision: PrecisionOpt = None,
    samples: SamplesOpt = None,
    eval_every: EvalOpt = None,
    log_every: LogOpt = None,
    plan: PlanOpt = None,
    progress: ProgressOpt = True,
    checkpoint_every: CkptEveryOpt = None,
    checkpoint_dir: CkptDirOpt = None,
    resume: ResumeOpt = False,
    recovery: RecoveryOpt = "none",
    emb_nodes: EmbNodesOpt = 8,
    mtbf: MtbfOpt = None,
    failures: FailuresOpt = None,
    target_pls: PlsOpt = 0.02,
    job_hours: JobHoursOpt = 24.0,
    energy: EnergyOpt = False,
    energy_hardware: EnergyHwOpt = None,
) -> None:
    """Train a model on a store (--data) or synthetic data (--synthetic); report AUC, log loss, NE."""
    from recstack.spec import load_config
    from recstack.train.dist import init_group, under_torchrun
    from recstack.train.run import check_device
    from recstack.train.run import train as run_train

    if (data is None) == (not synthetic):
        raise ConfigError("give exactly one of --data DIR or --synthetic")
    if data is not None and not data.is_dir():
        raise DataError(f"{data}: data directory not found")
    if optimizer is not None and optimizer not in ("sgd", "adagrad"):
        raise ConfigError(f"--optimizer: {optimizer!r} is not one of sgd, adagrad")
    if backend not in ("torch", "fused", "fbgemm"):
        raise ConfigError(f"--backend: {backend!r} is not one of torch, fused, fbgemm")
    if precision is not None and precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision: {precision!r} is not one of fp32, bf16")
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    if samples is not None and not synthetic:
        raise ConfigError("--samples applies to --synthetic only")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if mtbf is not None and failures is not None:
        raise ConfigError("give at most one of --mtbf and --failures")
    if failures is not None and not failures.is_file():
        raise DataError(f"{failures}: failure trace not found")
    if energy_hardware is not None:
        if not energy:
            raise ConfigError("--energy-hardware applies with --energy only")
        from recstack.spec import load_device

        load_device(energy_hardware)  # unknown name: ConfigError listing the shipped configs
    rec = None
    if recovery != "none" or mtbf is not None or failures is not None:
        from recstack.train.recovery import RecoverySpec

        RecoverySpec(policy=recovery, emb_nodes=emb_nodes, target_pls=target_pls, job_hours=job_hours)  # validates
        rec = {"policy": recovery, "emb_nodes": emb_nodes, "target_pls": target_pls, "job_hours": job_hours,
               "mtbf_s": mtbf, "failures_file": str(failures) if failures is not None else None}
    device = check_device(device, nproc)
    spec, ts = load_config(config, scale)
    upd: dict[str, Any] = {}
    for k, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed), ("lr", lr),
                 ("optimizer", optimizer), ("eval_every", eval_every), ("precision", precision)):
        if v is not None:
            upd[k] = v
    try:
        ts = ts.model_validate({**ts.model_dump(), **upd})
    except Exception as e:  # pydantic ValidationError: name the option
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            err = e.errors()[0]
            raise ConfigError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
        raise
    if ts.precision == "bf16" and device == "cpu":
        from recstack.machine import cpu_facts

        if not cpu_facts()["bf16"]:
            ui_console(stderr=True).print("note: this CPU has no native bfloat16 arithmetic (AVX512_BF16, AMX-BF16): "
                                          "bf16 is emulated here and likely slower than fp32")
    plan_map = _read_plan(plan)
    if synthetic:
        n = samples or max(20_000, int((ts.steps or 0) * ts.batch_size / 0.8) + 1)
        data = out / "data"
        if under_torchrun():
            import torch.distributed as dist

            info = init_group(device)
            if info.is_main:
                _synth_data(spec, data, n, ts.seed, config, scale, progress)
            dist.barrier()
        else:
            _synth_data(spec, data, n, ts.seed, config, scale, progress)
    extra = {"config": config, "scale": scale, "synthetic": synthetic}
    summary = run_train(spec, ts, data, out, device=device, backend=backend, progress=progress, nproc=nproc,
                        plan=plan_map, log_every=log_every, extra=extra, checkpoint_every=checkpoint_every,
                        checkpoint_dir=checkpoint_dir, resume=resume, recovery=rec, energy=energy,
                        energy_hardware=energy_hardware)
    if summary:
        print_result(summary, out)


def demo(
    out: Annotated[Path, _Opt("--out", help="Run directory.")] = Path("runs/demo"),
    seed: Annotated[int, _Opt("--seed", help="Seed for data and training.")] = 0,
    progress: ProgressOpt = True,
) -> None:
    """Synthesise a small Criteo-like dataset, train a DLRM for about a minute, compare with the teacher."""
    from recstack.data import Store
    from recstack.spec import load_config
    from recstack.train.run import resolve_steps
    from recstack.train.run import train as run_train

    console = ui_console()
    t0 = time.perf_counter()
    spec, ts = load_config(DEMO_CONFIG)
    ts = ts.model_copy(update={"seed": seed})
    # Not fbgemm: its CPU kernel is faster on one thread but collapses (100x) when its OpenMP
    # threads compete with other processes for the cores; the numbers are the same either way.
    backend = DEMO_BACKEND
    console.print(
        f"[bold]recstack demo[/]: {spec.name} ({spec.num_tables} tables, {spec.dense_features} dense "
        f"features), {DEMO_SAMPLES:,} synthetic samples, seed {seed}"
    )
    data = _synth_data(spec, out / "data", DEMO_SAMPLES, seed, DEMO_CONFIG, 1.0, progress)
    steps = resolve_steps(Store(data), ts)  # the config may leave steps to "one epoch"
    console.print(
        f"data ready in {time.perf_counter() - t0:.1f} s; training {steps} steps x {ts.batch_size} "
        f"({ts.optimizer}, lr {ts.lr}, {backend} embeddings)"
    )
    summary = run_train(
        spec, ts, data, out, progress=progress, backend=backend, eval_samples=DEMO_EVAL_SAMPLES,
        extra={"config": DEMO_CONFIG, "synthetic": True, "demo": True},
    )
    print_result(summary, out, console)
    gap = summary.get("auc_gap")
    if gap is not None:
        verdict = "within" if gap <= 0.02 else "NOT within"
        console.print(
            f"trained AUC {summary['auc']:.4f} vs teacher ceiling {summary['teacher_auc']:.4f}: "
            f"gap {gap:.4f}, {verdict} 0.02. Total {time.perf_counter() - t0:.0f} s. "
            f"Plot: {out / 'learning_curve.png'}"
        )


DEMO_SAMPLES = 3_000_000  # the config trains one epoch of the 2.4M-sample train split: 2,343 steps of 1,024
DEMO_EVAL_SAMPLES = 100_000  # per periodic validation; the final test evaluation uses the whole split
DEMO_BACKEND = DEFAULT_BACKEND


def cpr_experiment(
    config: ConfigArg,
    out: Annotated[Path, _Opt("--out", help="Directory: results.json, cpr_experiment.png, data/.")],
    seeds: Annotated[int, _Opt("--seeds", help="Seeds (training init and failure draw) per policy.")] = 3,
    samples: Annotated[int, _Opt("--samples", help="Synthetic samples.")] = 400_000,
    scale: ScaleOpt = 0.01,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    policies: Annotated[str, _Opt("--policies", help="Comma-separated policies.")] = "full,cpr,cpr-mfu,cpr-ssu",
    target_pls: PlsOpt = 0.02,
    pls_sweep: Annotated[str, _Opt("--pls-sweep", help="Comma-separated extra target PLS values for the CPR "
                                                      "policies, e.g. 0.05,0.1,0.2.")] = "",
    emb_nodes: EmbNodesOpt = 8,
    mtbf: MtbfOpt = None,
    job_hours: JobHoursOpt = 24.0,
    backend: BackendOpt = DEFAULT_BACKEND,
    progress: ProgressOpt = True,
) -> None:
    """Train one model under no failures, full, cpr, cpr-mfu and cpr-ssu with the same failures; compare."""
    from recstack.io import atomic_write_json
    from recstack.spec import load_config
    from recstack.train.cpr_experiment import PLOT, RESULTS, run_experiment, summarise

    spec, ts = load_config(config, scale)
    upd = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    ts = ts.model_validate({**ts.model_dump(), **upd, "eval_every": 10**9})
    try:
        sweep = tuple(float(x) for x in pls_sweep.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--pls-sweep: expected comma-separated numbers, got {pls_sweep!r}") from None
    pols = tuple(p.strip() for p in policies.split(",") if p.strip())
    console = ui_console()
    data = _synth_data(spec, out / "data", samples, ts.seed, config, scale, progress)
    rec = {"emb_nodes": emb_nodes, "job_hours": job_hours, "mtbf_s": mtbf}
    rows = run_experiment(spec, ts, data, out, seeds=seeds, policies=pols, target_pls=target_pls, pls_sweep=sweep,
                          recovery=rec, backend=backend,
                          progress=(lambda msg: console.print(msg, highlight=False)) if progress else None)
    summ = summarise(rows)
    atomic_write_json(out / "summary.json", summ)
    t = Table(title=f"{spec.name}: recovery policies over {seeds} seed(s)", box=box.SIMPLE_HEAD)
    for col in ("policy", "target PLS", "AUC (mean +- std)", "AUC drop", "PLS incurred", "overhead", "bytes written"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for i in summ:
        t.add_row(
            i["policy"], f"{i['target_pls']:g}" if i["target_pls"] is not None else "-",
            f"{i['auc']:.4f} +- {i['auc_std']:.4f}", f"{i.get('auc_drop', 0.0):+.4f}", f"{i['pls']:.4f}",
            f"{i['overhead_fraction']:.2%}", f"{i['bytes_written'] / 2**20:,.0f} MiB",
        )
    console.print(t)
    console.print(f"rows: {out / RESULTS}; per policy: {out / 'summary.json'}; plot: {out / PLOT}")
