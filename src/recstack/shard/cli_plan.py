"""`recstack shard plan`, `export-torchrec`, `import-torchrec`: thin wrappers of shard.planners,
shard.plan and shard.torchrec_plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from recstack.ui import console as ui_console
from recstack.ui import short_list

if TYPE_CHECKING:
    from rich.console import Console

    from recstack.spec import ShardingPlan, ShardTask

_Opt = typer.Option


def print_plan(plan: ShardingPlan, task: ShardTask, console: Console | None = None) -> None:
    """Per device: tables, bytes vs cap, summed heuristic costs; sharding types; planning time."""
    from rich import box
    from rich.table import Table

    from recstack.shard.plan import device_summary, fmt_bytes

    c = console or ui_console()
    rows = device_summary(plan, task)
    t = Table(title=f"plan: {plan.planner or '?'} for task {task.id} ({len(task.tables)} tables, {task.devices} "
                    f"devices x {fmt_bytes(task.mem_bytes)})", box=box.SIMPLE_HEAD)
    for col in ("device", "tables", "bytes", "of cap", "sum dim", "sum dim x pool", "sum dim x pool x log10 rows",
                "names"):
        t.add_column(col, justify="left" if col == "names" else "right")
    for r in rows:
        t.add_row(str(r["device"]), str(len(r["tables"])), fmt_bytes(r["bytes"]), f"{r['bytes'] / r['cap']:.0%}",
                  f"{r['dim']:.0f}", f"{r['lookup']:.1f}", f"{r['size-lookup']:.1f}", short_list(r["tables"], 48))
    c.print(t)
    types: dict[str, int] = {}
    for sh in plan.tables.values():
        types[sh.sharding_type] = types.get(sh.sharding_type, 0) + 1
    look = [r["lookup"] for r in rows]
    mean = sum(look) / len(look) if look else 0.0
    c.print("sharding types: " + ", ".join(f"{k} {v}" for k, v in types.items())
            + (f"; max/mean dim x pool: {max(look) / mean:.3f}" if mean > 0 else ""))
    if set(types) - {"table_wise"}:
        c.print("(a split or replicated table counts on every device holding a piece of it)")
    s = plan.meta.get("planning_s")
    if s is not None:
        extra = f" (TorchRec planner.plan {plan.meta['torchrec_plan_s'] * 1e3:.1f} ms)" if "torchrec_plan_s" in plan.meta else ""
        c.print(f"planning time: {s * 1e3:.2f} ms{extra}")


def plan_cmd(
    tasks: Annotated[Path, typer.Argument(metavar="TASKS", help="Tasks file (TaskSet JSON, `recstack shard tasks`).")],
    task: Annotated[int, _Opt("--task", help="Task id in TASKS.")],
    out: Annotated[Path, _Opt("--out", help="Plan JSON to write (recstack-sharding-plan/1).")],
    planner: Annotated[str, _Opt(
        "--planner", help="random, round-robin, dim-greedy, size-greedy, lookup-greedy, size-lookup-greedy, "
                          "torchrec (TorchRec's planner for GPUs), torchrec-cpu, torchrec-table-wise, or a "
                          "registered learned planner.")] = "size-lookup-greedy",
    seed: Annotated[int, _Opt("--seed", help="Seed (random planner; passed to every planner).")] = 0,
) -> None:
    """Place one task's tables on its devices with a planner; write the plan JSON."""
    from recstack.shard.plan import load_task, save_plan
    from recstack.shard.planners import get_planner, make_plan

    t = load_task(tasks, task)
    p = get_planner(planner)
    plan = make_plan(t, p, seed)
    save_plan(plan, out)
    c = ui_console()
    print_plan(plan, t, c)
    c.print(f"written: {out}")


def export_torchrec_cmd(
    plan: Annotated[Path, typer.Argument(metavar="PLAN", help="Plan JSON (recstack-sharding-plan/1).")],
    out: Annotated[Path, _Opt("--out", help="torch.save file of the TorchRec ShardingPlan (e.g. plan.pt); "
                                            "a readable JSON goes next to it as <stem>.torchrec.json.")],
    tasks: Annotated[Path | None, _Opt("--tasks", help="Tasks file, to check the plan against its task.")] = None,
    task: Annotated[int | None, _Opt("--task", help="Task id in --tasks (default: the plan's task).")] = None,
    module_path: Annotated[str, _Opt("--module-path", help="FQN of the EmbeddingBagCollection in the model "
                                                           "(e.g. sparse_arch.embedding_bag_collection).")] = "",
    device: Annotated[str | None, _Opt("--device", help="cuda or cpu in shard placements (default: the plan's "
                                                        "compute device, else cuda).")] = None,
) -> None:
    """Write a plan as a TorchRec ShardingPlan: torch.save of the object, plus a readable JSON."""
    from recstack.errors import ConfigError
    from recstack.shard.plan import load_plan, load_task
    from recstack.shard.torchrec_plan import save_torchrec_plan, to_torchrec

    if device is not None and device not in ("cuda", "cpu"):
        raise ConfigError(f"--device must be cuda or cpu, got {device!r}")
    p = load_plan(plan)
    t = None
    if tasks is not None:
        tid = task if task is not None else p.task
        if tid is None:
            raise ConfigError(f"{plan}: task: the plan names no task; give --task")
        t = load_task(tasks, tid)
    elif task is not None:
        raise ConfigError("--task applies with --tasks only")
    tr = to_torchrec(p, t, module_path, device)
    pt, js = save_torchrec_plan(tr, out)
    c = ui_console()
    c.print(str(tr))
    c.print(f"written: {pt} (torch.save of torchrec.distributed.types.ShardingPlan; "
            f"torch.load(..., weights_only=False) with torchrec installed) and {js} (readable JSON)")


def import_torchrec_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="TorchRec plan: a torch.save file of a "
                                                              "ShardingPlan (trusted files only: it is unpickled) "
                                                              "or the .torchrec.json rendering.")],
    tasks: Annotated[Path, _Opt("--tasks", help="Tasks file (TaskSet JSON).")],
    task: Annotated[int, _Opt("--task", help="Task id in TASKS whose tables the plan shards.")],
    out: Annotated[Path, _Opt("--out", help="Plan JSON to write (recstack-sharding-plan/1).")],
    module_path: Annotated[str | None, _Opt("--module-path", help="Module of the TorchRec plan to read "
                                                                  "(default: its only one).")] = None,
) -> None:
    """Convert a TorchRec ShardingPlan into a recstack plan for one task (checked against its memory cap)."""
    from recstack.shard.plan import load_task, save_plan
    from recstack.shard.torchrec_plan import from_torchrec, load_torchrec_plan

    t = load_task(tasks, task)
    tr = load_torchrec_plan(file)
    plan = from_torchrec(tr, t, module_path, planner="torchrec-import", where=str(file))
    plan = plan.model_copy(update={"meta": {"source": str(file)}})
    save_plan(plan, out)
    c = ui_console()
    print_plan(plan, t, c)
    c.print(f"written: {out}")
