"""Embedding sharding: table pools and tasks, planners, measured placement cost, TorchRec plans, bench."""

from recstack.shard.bench import memory_balance, run_bench, summarise
from recstack.shard.indices import generate_indices
from recstack.shard.measure import PlanCost, measure_plan, measure_plans
from recstack.shard.plan import check_plan, load_plan, save_plan
from recstack.shard.planners import PLANNERS, Planner, get_planner, make_plan, register_planner
from recstack.shard.pool import make_pool
from recstack.shard.tasks import load_tasks, make_tasks, save_tasks

__all__ = [
    "PLANNERS", "PlanCost", "Planner", "check_plan", "generate_indices", "get_planner", "load_plan", "load_tasks",
    "make_plan", "make_pool", "make_tasks", "measure_plan", "measure_plans", "memory_balance", "register_planner",
    "run_bench", "save_plan", "save_tasks", "summarise",
]
