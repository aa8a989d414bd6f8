"""`recstack shard measure`: the measured cost of a plan (thin wrapper of shard.measure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recstack.ui import console as ui_console
from recstack.ui import short_list

if TYPE_CHECKING:
    from rich.console import Console

    from recstack.shard.measure import PlanCost

_Opt = typer.Option


def print_cost(pc: PlanCost, plan_name: str, console: Console | None = None) -> None:
    """Per device: shards, forward / backward kernel ms, comm ms, total, memory vs cap; then the
    plan cost (max over devices), how the kernels were timed and where the comm costs came from."""
    from rich import box
    from rich.table import Table

    from recstack.shard.plan import fmt_bytes

    c = console or ui_console()
    b = pc.bottleneck
    t = Table(title=f"measured cost of {plan_name} on task {pc.task}: {pc.cost_ms:.3f} ms "
                    f"(max over devices: device {b})", box=box.SIMPLE_HEAD)
    for col in ("device", "shards", "fwd ms", "bwd ms", "comm ms", "total ms", "memory", "of cap", "kernel", "names"):
        t.add_column(col, justify="left" if col == "names" else "right")
    for d in pc.devices:
        src = "cached" if d.cached else ("-" if not d.shards else "measured")
        if d.row_cap is not None:
            src += ", rows capped"
        total = f"[bold]{d.total_ms:.3f}[/bold]" if d.rank == b else f"{d.total_ms:.3f}"
        t.add_row(str(d.rank), str(len(d.shards)), f"{d.fwd_ms:.3f}", f"{d.bwd_ms:.3f}", f"{d.comm_ms:.3f}", total,
                  fmt_bytes(d.mem_bytes), f"{d.mem_bytes / d.mem_cap:.0%}", src, short_list(d.shards, 44))
    c.print(t)
    m = pc.method
    c.print(f"kernels: {m['operator']}, batch {m['batch_size']}, {len(m['seeds'])} index batches (seeds "
            f"{m['seeds'][0]}..{m['seeds'][-1]}), {m['warmup']} warm-up steps, {m['threads']} thread(s)"
            + ("; devices interleaved" if m.get("interleaved") else ""))
    c.print(f"statistic: {m['statistic']}")
    ref = m.get("reference")
    if ref:
        slow = [d.slowdown for d in pc.devices if d.slowdown is not None]
        now = f"; while measuring, the machine ran {sorted(slow)[len(slow) // 2]:.2f}x the calibrated time" if slow else ""
        c.print(f"speed normalisation: reference operator ({ref['tables']} x {ref['rows']} x {ref['dim']}, pooling "
                f"{ref['pooling']:g}, batch {ref['batch']}) calibrated at {ref['baseline_ms']:.3f} ms"
                f"{' (' + ref['calibration'] + ')' if ref.get('calibration') else ''}{now}")
    cm = pc.comm
    if cm.get("kind") == "measured":
        head = "communication: MEASURED curve"
    else:
        head = "communication: MODELLED (no measurement)"
    params = (f"alpha {cm['alpha_ms'] * 1e3:.1f} us/step, bandwidth {cm['bandwidth_gb_per_s']:.3g} GB/s"
              if "alpha_ms" in cm else "")
    c.print(f"{head}: {params}{'; ' if params and cm.get('source') else ''}{cm.get('source', '')}; comm ms = "
            f"forward all-to-all + backward all-to-all of batch x output columns x 4 B x (D-1)/D per device")
    for n in pc.notes:
        c.print(f"note: {n}")
    if m.get("cache"):
        c.print(f"cache: {m['cache']} ({m['cached_devices']} device(s) from cache, {m['measured_devices']} measured)")


def measure_cmd(
    tasks: Annotated[Path, typer.Argument(metavar="TASKS", help="Tasks file (TaskSet JSON, `recstack shard tasks`).")],
    task: Annotated[int, _Opt("--task", help="Task id in TASKS.")],
    plan: Annotated[Path, _Opt("--plan", help="Plan JSON (recstack-sharding-plan/1) to measure.")],
    as_json: Annotated[bool, _Opt("--json", help="Print the result as JSON instead of tables.")] = False,
    out: Annotated[Path | None, _Opt("--out", help="Also write the JSON result here (atomically).")] = None,
    backend: Annotated[str, _Opt("--backend", help="auto (fbgemm when installed, else fused), fbgemm or fused.")] = "auto",
    comm: Annotated[str, _Opt("--comm", help="auto (measured gloo curve; modelled if that fails), measured, or "
                                             "model (alpha-beta from --topology).")] = "auto",
    topology: Annotated[str, _Opt("--topology", help="Hardware config (name or YAML) for --comm model.")] = "cpu-2core",
    cache: Annotated[Path | None, _Opt("--cache", help="Cost cache directory (default: TASKS.costcache/ next to "
                                                       "TASKS).")] = None,
    no_cache: Annotated[bool, _Opt("--no-cache", help="Measure every kernel afresh and store no costs (the machine "
                                                      "calibration in the cache directory is still used).")] = False,
    recalibrate: Annotated[bool, _Opt("--recalibrate", help="Measure the machine calibration again (comm curve, "
                                                            "reference speed).")] = False,
    normalize: Annotated[bool, _Opt("--normalize/--no-normalize", help="Scale each block by the machine's speed "
                                    "(a reference operator timed around it) relative to the calibration.")] = True,
    reps: Annotated[int, _Opt("--reps", help="Timed repetitions per device.")] = 24,
    warmup: Annotated[int, _Opt("--warmup", help="Untimed warm-up steps per device.")] = 3,
    blocks: Annotated[int, _Opt("--blocks", help="Repetitions are split into this many blocks (cost: median over "
                                                 "blocks of the normalised block median; min with "
                                                 "--no-normalize).")] = 8,
    batches: Annotated[int, _Opt("--batches", help="Distinct index batches (seeds) cycled through.")] = 3,
    seed: Annotated[int, _Opt("--seed", help="First index-batch seed.")] = 0,
    threads: Annotated[int, _Opt("--threads", help="Torch threads while timing (1: CPU time of one thread).")] = 1,
    clock: Annotated[str, _Opt("--clock", help="cpu (process CPU time; needs --threads 1) or wall.")] = "cpu",
    dtype: Annotated[str, _Opt("--dtype", help="Kernel precision: table (each table's dtype; 2-byte and int8 "
                                               "tables run the fp16 kernel), fp32 or fp16.")] = "table",
    max_device_gb: Annotated[float, _Opt("--max-device-gb", help="Tables allocated per device at most (GiB); "
                                                                 "above it rows are capped.")] = 2.0,
) -> None:
    """Measure a plan: each device's fused embedding operator (forward + backward) plus its all-to-all costs."""
    from recstack.errors import ConfigError
    from recstack.io import atomic_write_json
    from recstack.shard.measure import default_cache_dir, measure_plan
    from recstack.shard.plan import load_plan, load_task

    if max_device_gb <= 0:
        raise ConfigError(f"--max-device-gb must be > 0, got {max_device_gb}")
    t = load_task(tasks, task)
    p = load_plan(plan)
    cache_dir = cache if cache is not None else default_cache_dir(tasks)
    cdir = None if no_cache else cache_dir
    err = ui_console(stderr=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("measuring {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        job = bar.add_task("kernels", total=None)

        def progress(desc: str, done: int, total: int) -> None:
            bar.update(job, description=desc, completed=done, total=total or None)

        pc = measure_plan(t, p, backend=backend, reps=reps, warmup=warmup, blocks=blocks, batches=batches, seed=seed,
                          threads=threads, clock=clock, dtype=dtype, max_device_bytes=int(max_device_gb * 2**30),
                          cache=cdir, calibration=cache_dir, recalibrate=recalibrate, normalize=normalize,
                          comm=comm, topology=topology, progress=progress)
    d = {"tasks": str(tasks), "plan": str(plan), **pc.to_dict()}
    if out is not None:
        try:
            atomic_write_json(out, d)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot write ({e.strerror})") from None
    if as_json:
        print(json.dumps(d, indent=2))
        return
    print_cost(pc, plan.name)

