"""`recstack shard bench`: every planner on every task, priced by measurement.

For each task and planner: plan (wall time), then the plan's measured cost (max over devices of
forward + backward kernels + all-to-all, `recstack.shard.measure`), and the memory balance
(largest device's bytes over the mean). Planners that fail on a task (memory, TorchRec errors)
are recorded with the reason, never dropped. Results: `results.json` (one row per task x
planner), `summary.json` (per planner: median cost, geometric-mean cost relative to the
reference planner, wins, failures) and `bench.png`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError, RecstackError
from recstack.io import atomic_write_json, save_figure
from recstack.shard.plan import device_bytes
from recstack.spec.sharding import ShardingPlan, ShardTask, TaskSet


def memory_balance(task: ShardTask, plan: ShardingPlan) -> dict[str, float]:
    """Bytes per device under the plan: max over mean (1.0 = even) and the largest share of the cap."""
    per = device_bytes(plan, task)
    mean = sum(per) / len(per)
    return {"max_over_mean": max(per) / mean if mean > 0 else 1.0, "max_of_cap": max(per) / task.mem_bytes,
            "bytes": per}


def run_bench(tasks: TaskSet, planners: list[str], *,
              measure: Callable[[list[tuple[ShardTask, ShardingPlan]]], list[Any]],
              seed: int = 0, task_ids: list[int] | None = None,
              progress: Callable[[str, int], None] | None = None) -> list[dict[str, Any]]:
    """One row per (task, planner). Per task, every planner's plan is made first and then all the
    plans are measured together (interleaved: the same machine conditions for the comparison)."""
    from recstack.shard.planners import make_plan

    chosen = [t for t in tasks.tasks if task_ids is None or t.id in task_ids]
    if task_ids is not None and len(chosen) != len(set(task_ids)):
        missing = sorted(set(task_ids) - {t.id for t in chosen})
        raise ConfigError(f"--task-ids: no task {missing[0]} (tasks {tasks.tasks[0].id}..{tasks.tasks[-1].id})")
    from recstack.shard.planners import get_planner

    objs = [get_planner(p) for p in planners]  # unknown names fail before any work
    rows: list[dict[str, Any]] = []
    for task in chosen:
        planned: list[tuple[dict[str, Any], ShardingPlan]] = []
        for name, planner in zip(planners, objs):
            row: dict[str, Any] = {"task": task.id, "planner": name, "tables": len(task.tables),
                                   "devices": task.devices}
            t0 = time.perf_counter()
            try:
                plan = make_plan(task, planner, seed)
                row["plan_s"] = time.perf_counter() - t0
                row["memory"] = memory_balance(task, plan)
                row["sharding_types"] = sorted({s.sharding_type for s in plan.tables.values()})
                planned.append((row, plan))
            except RecstackError as e:
                row["plan_s"] = time.perf_counter() - t0
                row["cost_ms"] = None
                row["error"] = str(e)
            rows.append(row)
            if progress is not None:
                progress(f"task {task.id}: planned {name}", 0)
        if planned:
            try:
                costs = measure([(task, plan) for _, plan in planned])
            except RecstackError as e:
                for row, _ in planned:
                    row["cost_ms"], row["error"] = None, f"measurement: {e}"
                costs = []
            for (row, _), cost in zip(planned, costs):
                d = cost.to_dict()
                row["cost_ms"] = d["cost_ms"]
                row["devices_ms"] = [x.get("total_ms") for x in d.get("devices", [])]
                row["comm"] = d.get("comm")
        if progress is not None:
            progress(f"task {task.id} measured", len(planners))
    return rows


def summarise(rows: list[dict[str, Any]], reference: str = "torchrec") -> dict[str, Any]:
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    tasks = sorted({r["task"] for r in rows})
    by = {(r["task"], r["planner"]): r for r in rows}
    out: dict[str, Any] = {"reference": reference, "tasks": len(tasks), "planners": {}}
    for p in planners:
        costs = [by[(t, p)]["cost_ms"] for t in tasks if by.get((t, p), {}).get("cost_ms") is not None]
        rel = [by[(t, p)]["cost_ms"] / by[(t, reference)]["cost_ms"] for t in tasks
               if by.get((t, p), {}).get("cost_ms") and by.get((t, reference), {}).get("cost_ms")]
        wins = sum(1 for t in tasks if by.get((t, p), {}).get("cost_ms") is not None and by[(t, p)]["cost_ms"] == min(
            by[(t, q)]["cost_ms"] for q in planners if by.get((t, q), {}).get("cost_ms") is not None))
        out["planners"][p] = {
            "measured": len(costs), "failed": sum(1 for t in tasks if by.get((t, p), {}).get("cost_ms") is None),
            "median_cost_ms": statistics.median(costs) if costs else None,
            "mean_cost_ms": statistics.fmean(costs) if costs else None,
            "geomean_vs_reference": math.exp(statistics.fmean(math.log(x) for x in rel)) if rel else None,
            "wins": wins,
            "median_plan_s": statistics.median(by[(t, p)]["plan_s"] for t in tasks if (t, p) in by),
            "median_mem_max_over_mean": statistics.median(
                [by[(t, p)]["memory"]["max_over_mean"] for t in tasks if "memory" in by.get((t, p), {})] or [float("nan")]),
        }
    heur = {p: s for p, s in out["planners"].items() if p not in (reference, "random") and s["geomean_vs_reference"]}
    if heur:
        best = min(heur, key=lambda p: heur[p]["geomean_vs_reference"])
        out["best_heuristic"] = {"planner": best, "geomean_vs_reference": heur[best]["geomean_vs_reference"]}
    return out


def plot_bench(rows: list[dict[str, Any]], summary: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = summary["reference"]
    planners = list(summary["planners"])
    by = {(r["task"], r["planner"]): r for r in rows}
    tasks = sorted({r["task"] for r in rows})
    data, labels = [], []
    for p in planners:
        rel = [by[(t, p)]["cost_ms"] / by[(t, ref)]["cost_ms"] for t in tasks
               if by.get((t, p), {}).get("cost_ms") and by.get((t, ref), {}).get("cost_ms")]
        if rel:
            data.append(rel)
            labels.append(p)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.2))
    if data:
        ax.boxplot(data, tick_labels=labels, showmeans=True)
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_ylabel(f"measured plan cost / {ref}'s")
    ax.set_title(f"placement cost over {len(tasks)} tasks (lower is better)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    return save_figure(fig, path)


def write_results(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", rows)
    atomic_write_json(out / "summary.json", summary)
    plot_bench(rows, summary, out / "bench.png")
