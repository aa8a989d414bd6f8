"""`recstack trace ...`: capture, statistics, Chakra export, replay, what-if synthesis. Thin: parse, call, print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from recstack.ui import console

app = typer.Typer(no_args_is_help=True)
_Opt = typer.Option


@app.command("capture")
def capture_cmd(
    config: Annotated[str, typer.Argument(help="Shipped model config name or YAML file.")],
    out: Annotated[Path, _Opt("--out", help="Run directory for the traces (replaced when the capture completes).")],
    scale: Annotated[float, _Opt("--scale", help="Multiply every table's rows by this factor.")] = 0.001,
    batch_size: Annotated[int | None, _Opt("--batch-size", help="Global batch size (default: the config's).")] = None,
    iterations: Annotated[int, _Opt("--iterations", help="Iterations captured.")] = 3,
    timing_iterations: Annotated[int, _Opt("--timing-iterations", help="Iterations timed without and with the observer.")] = 20,
    mode: Annotated[str, _Opt("--mode", help="train or infer.")] = "train",
    nproc: Annotated[int, _Opt("--nproc", help="Local processes (gloo on CPU, NCCL on CUDA); one trace per rank.")] = 1,
    device: Annotated[str, _Opt("--device", help="cpu or cuda.")] = "cpu",
    backend: Annotated[str, _Opt("--backend", help="Embedding backend: torch, fused or fbgemm.")] = "fused",
    save_indices: Annotated[bool, _Opt("--save-indices", help="Also record the embedding operators' indices.")] = False,
    seed: Annotated[int, _Opt("--seed", help="Seed of the synthetic batches.")] = 0,
) -> None:
    """Run iterations under torch.profiler with the execution-trace observer; save ET + Kineto per rank."""
    from recstack.errors import ConfigError
    from recstack.spec import load_config
    from recstack.trace.capture import CaptureOptions, capture

    spec, ts = load_config(config, scale=scale)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        ts = ts.model_copy(update={"batch_size": batch_size})
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    opts = CaptureOptions(mode=mode, iterations=iterations, timing_iterations=timing_iterations, nproc=nproc,
                          device=device, backend=backend, save_indices=save_indices, seed=seed)
    import os

    with console().status(f"capturing {spec.name} ({nproc} process{'es' if nproc > 1 else ''})"):
        meta = capture(config, spec, ts, out, opts)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 reports for all
        return
    t = Table(title=f"trace capture: {spec.name}, batch {ts.batch_size}, {mode}", box=box.SIMPLE_HEAD)
    for col in ("rank", "iteration ms", "with ET observer", "overhead", "with profiler + ET", "overhead"):
        t.add_column(col, justify="right")
    for r in meta["ranks"]:
        t.add_row(str(r["rank"]), f"{r['iteration_ms']:.2f}", f"{r['observer_ms']:.2f}",
                  f"{r['observer_overhead']:+.1%}", f"{r['profiled_ms']:.2f}", f"{r['profiled_overhead']:+.1%}")
    c = console()
    c.print(t)
    c.print(f"written: {out} (rank<R>.et.json, rank<R>.kineto.json, capture.json)")


def _register() -> None:
    """Commands that live in their own modules."""
    from recstack.trace.cli_stats import stats_cmd, synth_cmd

    app.command("stats")(stats_cmd)
    app.command("synth")(synth_cmd)
    from recstack.trace.cli_chakra import chakra_json_cmd, export_chakra_cmd
    from recstack.trace.cli_replay import replay_cmd

    app.command("replay")(replay_cmd)
    app.command("export-chakra")(export_chakra_cmd)
    app.command("chakra-json")(chakra_json_cmd)


_register()
