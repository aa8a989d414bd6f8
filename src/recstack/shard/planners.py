"""Sharding planners behind one interface, and the baselines of REFERENCE.md section 8.

A `Planner` has a `name` and `plan(task, seed) -> ShardingPlan`. `PLANNERS` maps a name to a
factory (keyword options -> Planner); `register_planner` adds one (the learned planners do),
`get_planner(name, **options)` builds one, `make_plan(task, planner, seed)` runs it, records the
planning time in `plan.meta["planning_s"]` and checks the plan against the task (same tables,
shards tiling each table, every device within `task.mem_bytes`).

Baselines, all table-wise and all respecting the memory cap:

- greedy (dim-, size-, lookup-, size-lookup-greedy): sort tables by cost descending (ties: larger
  bytes first, then task order); put each on the device with the smallest accumulated cost that
  still has memory for it (ties: fewer bytes used, then the lower rank). Costs: dim; bytes;
  dim x pooling; dim x pooling x log10(rows).
- random: tables largest-bytes first, each on a device drawn uniformly from those with room
  (numpy Generator seeded with `seed`; same seed, same plan).
- round-robin: tables in task order; table i goes to the next device in the cycle that has room.
- torchrec, torchrec-cpu, torchrec-table-wise: TorchRec's EmbeddingShardingPlanner
  (`recstack.shard.torchrec_plan`; needs torchrec).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from recstack.errors import ConfigError
from recstack.shard.plan import COSTS, check_fits, check_plan, fmt_bytes, table_wise_plan, task_label
from recstack.spec import ShardingPlan, ShardTable, ShardTask


@runtime_checkable
class Planner(Protocol):
    """Places a task's tables on its devices."""

    name: str

    def plan(self, task: ShardTask, seed: int = 0) -> ShardingPlan: ...


PlannerFactory = Callable[..., Planner]
PLANNERS: dict[str, PlannerFactory] = {}


def register_planner(name: str, factory: PlannerFactory) -> None:
    """Make `factory(**options)` available as planner `name` (replaces an earlier one of that name)."""
    PLANNERS[name] = factory


def get_planner(name: str, **options: object) -> Planner:
    """The planner registered as `name`, built with `options`."""
    if name not in PLANNERS:
        raise ConfigError(f"--planner: unknown planner {name!r} (one of {', '.join(PLANNERS)})")
    return PLANNERS[name](**options)


def make_plan(task: ShardTask, planner: str | Planner, seed: int = 0) -> ShardingPlan:
    """Run `planner` on `task`; the plan gets planner, task, seed and planning_s (wall seconds of
    `plan()`) and is checked against the task (ConfigError if it breaks the memory cap)."""
    p = get_planner(planner) if isinstance(planner, str) else planner
    t0 = time.perf_counter()
    plan = p.plan(task, seed)
    dt = time.perf_counter() - t0
    plan = plan.model_copy(update={"planner": plan.planner or p.name, "task": task.id,
                                   "meta": {**plan.meta, "seed": seed, "planning_s": dt}})
    check_plan(plan, task, f"{p.name} plan for {task_label(task)}")
    return plan


# ---------------------------------------------------------------- table-wise baselines
def _no_room(task: ShardTask, planner: str, t: ShardTable, used: Sequence[int], placed: int) -> ConfigError:
    free = [task.mem_bytes - u for u in used]
    best = max(range(len(free)), key=lambda d: (free[d], -d))
    return ConfigError(
        f"{task_label(task)}: {planner} could not place table {t.name!r} ({fmt_bytes(t.bytes)}): the most free "
        f"memory left is {fmt_bytes(free[best])} on device {best} (free per device: "
        f"{', '.join(fmt_bytes(f) for f in free)}; {placed} of {len(task.tables)} tables placed)")


def greedy_ranks(task: ShardTask, cost: Callable[[ShardTable], float], planner: str = "greedy") -> list[int]:
    """Rank of each task table under the greedy rule (see the module docstring)."""
    tables = task.tables
    costs = [cost(t) for t in tables]
    order = sorted(range(len(tables)), key=lambda i: (-costs[i], -tables[i].bytes, i))
    load = [0.0] * task.devices
    used = [0] * task.devices
    ranks = [-1] * len(tables)
    for n, i in enumerate(order):
        b = tables[i].bytes
        legal = [d for d in range(task.devices) if used[d] + b <= task.mem_bytes]
        if not legal:
            raise _no_room(task, planner, tables[i], used, n)
        d = min(legal, key=lambda k: (load[k], used[k], k))
        ranks[i] = d
        load[d] += costs[i]
        used[d] += b
    return ranks


@dataclass
class GreedyPlanner:
    """Largest cost first onto the least-loaded device with room; `cost` is one of plan.COSTS."""

    cost: str = "size-lookup"
    name: str = ""

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise ConfigError(f"greedy cost {self.cost!r} is not one of {', '.join(COSTS)}")
        self.name = self.name or f"{self.cost}-greedy"

    def plan(self, task: ShardTask, seed: int = 0) -> ShardingPlan:
        check_fits(task)
        ranks = greedy_ranks(task, COSTS[self.cost], self.name)
        return table_wise_plan(task, ranks, self.name, {"cost": self.cost})


@dataclass
class RandomPlanner:
    """Each table (largest first) on a device drawn uniformly from those with room."""

    name: str = "random"

    def plan(self, task: ShardTask, seed: int = 0) -> ShardingPlan:
        check_fits(task)
        rng = np.random.default_rng(seed)
        tables = task.tables
        order = sorted(range(len(tables)), key=lambda i: (-tables[i].bytes, i))
        used = [0] * task.devices
        ranks = [-1] * len(tables)
        for n, i in enumerate(order):
            legal = [d for d in range(task.devices) if used[d] + tables[i].bytes <= task.mem_bytes]
            if not legal:
                raise _no_room(task, self.name, tables[i], used, n)
            d = legal[int(rng.integers(len(legal)))]
            ranks[i] = d
            used[d] += tables[i].bytes
        return table_wise_plan(task, ranks, self.name)


@dataclass
class RoundRobinPlanner:
    """Table i (task order) on the next device of the cycle that has room for it."""

    name: str = "round-robin"

    def plan(self, task: ShardTask, seed: int = 0) -> ShardingPlan:
        check_fits(task)
        used = [0] * task.devices
        ranks = []
        nxt = 0
        for n, t in enumerate(task.tables):
            for k in range(task.devices):
                d = (nxt + k) % task.devices
                if used[d] + t.bytes <= task.mem_bytes:
                    break
            else:
                raise _no_room(task, self.name, t, used, n)
            ranks.append(d)
            used[d] += t.bytes
            nxt = (d + 1) % task.devices
        return table_wise_plan(task, ranks, self.name)


def _torchrec(**options: object) -> Planner:
    from recstack.shard.torchrec_plan import TorchRecPlanner

    return TorchRecPlanner(**options)  # type: ignore[arg-type]


register_planner("random", RandomPlanner)
register_planner("round-robin", RoundRobinPlanner)
for _cost in COSTS:
    register_planner(f"{_cost}-greedy", lambda _c=_cost, **kw: GreedyPlanner(cost=_c, **kw))
register_planner("torchrec", lambda **kw: _torchrec(**{"compute_device": "cuda", "name": "torchrec", **kw}))
register_planner("torchrec-cpu", lambda **kw: _torchrec(**{"compute_device": "cpu", "name": "torchrec-cpu", **kw}))
register_planner("torchrec-table-wise", lambda **kw: _torchrec(
    **{"compute_device": "cuda", "sharding_types": ("table_wise",), "name": "torchrec-table-wise", **kw}))
