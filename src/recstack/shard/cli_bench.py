"""`recstack shard bench TASKS --planners a,b,c --out DIR`: planners compared by measured cost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recstack.ui import console as ui_console

_Opt = typer.Option
DEFAULT_PLANNERS = "random,round-robin,dim-greedy,size-greedy,lookup-greedy,size-lookup-greedy,torchrec"


def bench_cmd(
    tasks_file: Annotated[Path, typer.Argument(help="Tasks JSON from `recstack shard tasks`.")],
    out: Annotated[Path, _Opt("--out", help="Directory for results.json, summary.json and bench.png.")],
    planners: Annotated[str, _Opt("--planners", help="Comma-separated planner names.")] = DEFAULT_PLANNERS,
    task_ids: Annotated[str | None, _Opt("--task-ids", help="Only these task ids, e.g. 0,1,2 or 0-19.")] = None,
    reference: Annotated[str, _Opt("--reference", help="Planner the others are compared with.")] = "torchrec",
    reps: Annotated[int | None, _Opt("--reps", help="Measurement repetitions (default: measure's own).")] = None,
    cache: Annotated[Path | None, _Opt("--cache", help="Measured-cost cache directory (default: TASKS.costcache/ next to "
                                                       "TASKS, as `shard measure`).")] = None,
    comm: Annotated[str, _Opt("--comm", help="all-to-all cost: auto, measured (gloo curve) or model.")] = "auto",
    seed: Annotated[int, _Opt("--seed", help="Seed for the planners that draw.")] = 0,
) -> None:
    """Plan every task with every planner, measure each plan, and compare (table, JSON, plot)."""
    from recstack.errors import ConfigError
    from recstack.shard.bench import run_bench, summarise, write_results
    from recstack.shard.measure import default_cache_dir, measure_plans
    from recstack.shard.tasks import load_tasks

    ts = load_tasks(tasks_file)
    names = [p.strip() for p in planners.split(",") if p.strip()]
    if not names:
        raise ConfigError("--planners: give at least one planner name")
    if reference not in names:
        names.append(reference)
    ids = None
    if task_ids:
        ids = []
        for part in task_ids.split(","):
            a, _, b = part.partition("-")
            try:
                ids += list(range(int(a), int(b) + 1)) if b else [int(a)]
            except ValueError:
                raise ConfigError(f"--task-ids: cannot read {part!r} (write e.g. 0,3,5-9)") from None
    cache_dir = cache if cache is not None else default_cache_dir(tasks_file)
    kw: dict = {"cache": cache_dir, "comm": comm}
    if reps is not None:  # fewer repetitions: as many blocks as repetitions at most
        from recstack.shard.measure import DEFAULT_BLOCKS

        kw.update(reps=reps, blocks=min(DEFAULT_BLOCKS, reps))

    def measure(items):
        return measure_plans(items, **kw)
    n = len(ids if ids is not None else ts.tasks) * len(names)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=ui_console(), transient=True) as bar:
        job = bar.add_task("planning and measuring", total=n)
        rows = run_bench(ts, names, measure=measure, seed=seed, task_ids=ids,
                         progress=lambda what, k: bar.update(job, advance=k, description=what))
    summary = summarise(rows, reference)
    write_results(out, rows, summary)
    t = Table(title=f"shard bench: {summary['tasks']} tasks from {tasks_file.name}", box=box.SIMPLE_HEAD)
    for col in ("planner", "measured", "failed", "median cost ms", f"cost / {reference}", "wins", "plan s",
                "mem max/mean"):
        t.add_column(col, justify="left" if col == "planner" else "right")
    for p, s in summary["planners"].items():
        t.add_row(p, str(s["measured"]), str(s["failed"]),
                  f"{s['median_cost_ms']:.2f}" if s["median_cost_ms"] is not None else "-",
                  f"{s['geomean_vs_reference']:.3f}" if s["geomean_vs_reference"] is not None else "-",
                  str(s["wins"]), f"{s['median_plan_s']:.3f}", f"{s['median_mem_max_over_mean']:.2f}")
    c = ui_console()
    c.print(t)
    if "best_heuristic" in summary:
        b = summary["best_heuristic"]
        c.print(f"best heuristic: {b['planner']}, measured cost {b['geomean_vs_reference']:.3f} x {reference}'s "
                "(geometric mean over tasks)")
    fails = [r for r in rows if r.get("error")]
    for r in fails[:10]:
        c.print(f"task {r['task']} {r['planner']}: {r['error']}", markup=False)
    if len(fails) > 10:
        c.print(f"... and {len(fails) - 10} more failures (results.json)")
    c.print(f"written: {out / 'results.json'}, {out / 'summary.json'}, {out / 'bench.png'}")
