"""TorchRec interop: TorchRec's planner as a baseline, and plans to and from TorchRec's ShardingPlan.

`TorchRecPlanner` runs `torchrec.distributed.planner.EmbeddingShardingPlanner.plan` (no process
group, no device: the module lives on the meta device) on the task's tables:

- module: an `EmbeddingBagCollection` with one `EmbeddingBagConfig` per table (rows, dim, one
  feature named like the table, data type from the table's dtype);
- constraints: `ParameterConstraints(pooling_factors=[table.pooling])` per table;
- topology: `Topology` (through TorchRec's `TopologyFactory`) with world_size = task.devices, one
  host, compute_device "cuda" (HBM cap = task.mem_bytes) or "cpu" (DDR cap = task.mem_bytes);
  no storage reservation (`FixedPercentageStorageReservation(0.0)`): the cap is the task's;
- batch size: TorchRec's planner takes the per-rank batch, task.batch_size // devices (the task's
  batch is the global one every device's embedding op serves);
- sharders: TorchRec's `EmbeddingBagCollectionSharder` limited to the sharding types of
  `recstack-sharding-plan/1` (table_wise, column_wise, row_wise, table_row_wise, data_parallel,
  those TorchRec offers on the compute device) and to the "fused" kernel ("dense" for
  data_parallel): UVM and SSD kernels would put tables outside the capped memory.

TorchRec's storage estimate adds input/output buffers to the tables' bytes, so it is stricter
than the cap the other planners apply; a TorchRec PlannerError becomes a ConfigError.

`to_torchrec(plan)` builds the `ShardingPlan({module_path: EmbeddingModuleShardingPlan})` with
one `ParameterSharding` per table and the exact shard sizes and offsets; `from_torchrec` reads one
back. `save_torchrec_plan` writes `torch.save(ShardingPlan)` plus a readable JSON rendering.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError
from recstack.io import atomic_open, atomic_write_json
from recstack.shard.plan import check_fits, check_plan, filled, fmt_bytes, task_label
from recstack.spec import ShardingPlan, ShardTask, TableSharding
from recstack.spec.sharding import SHARDING_TYPES

RENDER_FORMAT = "torchrec-sharding-plan/rendered-by-recstack/1"
_KERNELS = ("fused", "dense")
_DTYPES = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16", "int8": "INT8"}


def _torchrec() -> None:
    try:
        import torchrec  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        raise ConfigError(f"TorchRec interop needs torchrec 1.8 and fbgemm-gpu-cpu 1.8 ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------- the planner
def _module(task: ShardTask) -> Any:
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.modules.embedding_configs import DataType

    cfgs = [EmbeddingBagConfig(name=t.name, embedding_dim=t.dim, num_embeddings=t.rows, feature_names=[t.name],
                               data_type=getattr(DataType, _DTYPES[t.dtype])) for t in task.tables]
    return EmbeddingBagCollection(tables=cfgs, device=torch.device("meta"))


def _sharder(types: tuple[str, ...]) -> Any:
    """TorchRec's EBC sharder offering only `types` (in TorchRec's own order, so ties between
    equally rated options break the same way every run) and only the fused/dense kernels."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class _Limited(EmbeddingBagCollectionSharder):
        def sharding_types(self, compute_device_type: str) -> list[str]:
            return [t for t in super().sharding_types(compute_device_type) if t in types]

        def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
            return [k for k in super().compute_kernels(sharding_type, compute_device_type) if k in _KERNELS]

    return _Limited()


@dataclass
class TorchRecPlanner:
    """TorchRec's EmbeddingShardingPlanner on the task (see the module docstring)."""

    compute_device: str = "cuda"
    sharding_types: tuple[str, ...] = SHARDING_TYPES
    name: str = "torchrec"

    def __post_init__(self) -> None:
        if self.compute_device not in ("cuda", "cpu"):
            raise ConfigError(f"torchrec planner: compute_device must be cuda or cpu, got {self.compute_device!r}")
        bad = [t for t in self.sharding_types if t not in SHARDING_TYPES]
        if bad or not self.sharding_types:
            raise ConfigError(f"torchrec planner: sharding_types {list(self.sharding_types)}: each must be one "
                              f"of {', '.join(SHARDING_TYPES)}")
        self.sharding_types = tuple(self.sharding_types)
        _torchrec()  # import once here, so that planning time does not include it
        import torchrec.distributed.embeddingbag
        import torchrec.distributed.planner  # noqa: F401

    def plan(self, task: ShardTask, seed: int = 0) -> ShardingPlan:
        check_fits(task, whole_tables=set(self.sharding_types) <= {"table_wise", "data_parallel"})
        import logging
        import warnings

        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
        from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
        from torchrec.distributed.planner.types import (
            KernelConfig,
            PlannerError,
            TopologyFactory,
            TrainerConfig,
        )

        sharder = _sharder(self.sharding_types)
        offered = sharder.sharding_types(self.compute_device)
        if not offered:
            raise ConfigError(f"torchrec planner: TorchRec offers none of {list(self.sharding_types)} on "
                              f"{self.compute_device}")
        cap = task.mem_bytes
        topology = TopologyFactory.create_topology(
            TrainerConfig(world_size=task.devices, local_world_size=task.devices, hbm_cap_bytes=cap,
                          ddr_cap_bytes=cap),
            kernel_config=KernelConfig(compute_device=self.compute_device))
        local_batch = max(1, task.batch_size // task.devices)
        constraints = {t.name: ParameterConstraints(pooling_factors=[float(t.pooling)]) for t in task.tables}
        module = _module(task)
        planner = EmbeddingShardingPlanner(
            topology=topology, batch_size=local_batch, constraints=constraints,
            storage_reservation=FixedPercentageStorageReservation(0.0), debug=False)
        quiet = logging.getLogger("torchrec.distributed.planner")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                tr_plan = planner.plan(module, [sharder])
                dt = time.perf_counter() - t0
        except PlannerError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(
                f"{task_label(task)}: TorchRec's planner found no plan within {task.devices} devices x "
                f"{fmt_bytes(cap)} ({sum(t.bytes for t in task.tables) / 1e9:.3g} GB of tables; TorchRec also "
                f"counts input/output buffers of the per-rank batch {local_batch}): {first}") from None
        finally:
            quiet.setLevel(level)
        plan = from_torchrec(tr_plan, task, "", planner=self.name, check=False)
        import torchrec

        chosen: dict[str, int] = {}
        for sh in plan.tables.values():
            chosen[sh.sharding_type] = chosen.get(sh.sharding_type, 0) + 1
        return plan.model_copy(update={"meta": {
            "compute_device": self.compute_device, "torchrec_version": getattr(torchrec, "__version__", "?"),
            "torchrec_batch_size": local_batch, "offered_sharding_types": offered,
            "sharding_types": chosen, "torchrec_plan_s": dt}})


# ---------------------------------------------------------------- conversion
def _placement(rank: int, device: str) -> str:
    return f"rank:{rank}/cuda:{rank}" if device == "cuda" else f"rank:{rank}/{device}"


def to_torchrec(plan: ShardingPlan, task: ShardTask | None = None, module_path: str = "",
                device: str | None = None) -> Any:
    """A TorchRec `ShardingPlan` with one ParameterSharding per table of `plan` under `module_path`.

    Shards carry the plan's exact sizes and offsets (`EnumerableShardingSpec` of `ShardMetadata`
    placed on "rank:R/cuda:R", or "rank:R/cpu" with device "cpu"); data_parallel tables have no
    sharding spec and the "dense" kernel, as in TorchRec. `device` defaults to the plan's
    meta["compute_device"], else "cuda". With `task`, the plan is checked against it first and
    sizes the plan left out are filled in.
    """
    _torchrec()
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding
    from torchrec.distributed.types import ShardingPlan as TRShardingPlan

    device = device or str(plan.meta.get("compute_device", "cuda"))
    by_name = {t.name: t for t in task.tables} if task is not None else {}
    if task is not None:
        check_plan(plan, task)
    out = {}
    for name, sh in plan.tables.items():
        if name in by_name:
            sh = filled(sh, by_name[name])
        if sh.sharding_type == "data_parallel":
            out[name] = ParameterSharding(sharding_type="data_parallel", compute_kernel="dense",
                                          ranks=list(sh.ranks), sharding_spec=None)
            continue
        if not sh.shard_sizes or not sh.shard_offsets:
            raise ConfigError(f"table {name!r}: no shard_sizes/shard_offsets in the plan; give the task "
                              f"(--tasks/--task) so the table's size is known")
        spec = EnumerableShardingSpec([
            ShardMetadata(shard_offsets=list(o), shard_sizes=list(s), placement=_placement(r, device))
            for r, s, o in zip(sh.ranks, sh.shard_sizes, sh.shard_offsets)])
        out[name] = ParameterSharding(sharding_type=sh.sharding_type, compute_kernel=sh.compute_kernel,
                                      ranks=list(sh.ranks), sharding_spec=spec)
    return TRShardingPlan(plan={module_path: EmbeddingModuleShardingPlan(out)})


def from_torchrec(tr_plan: Any, task: ShardTask, module_path: str | None = None, planner: str = "torchrec",
                  check: bool = True, where: str = "TorchRec plan") -> ShardingPlan:
    """Our plan for `task` from a TorchRec ShardingPlan (module `module_path`; None: its only module)."""
    modules = getattr(tr_plan, "plan", None)
    if not isinstance(modules, dict):
        raise ConfigError(f"{where}: not a TorchRec ShardingPlan (no .plan mapping)")
    if module_path is None:
        if len(modules) != 1:
            raise ConfigError(f"{where}: modules {sorted(modules)}: choose one with --module-path")
        module_path = next(iter(modules))
    if module_path not in modules:
        raise ConfigError(f"{where}: no module {module_path!r} (modules: {sorted(modules)})")
    by_name = {t.name: t for t in task.tables}
    tables: dict[str, TableSharding] = {}
    for name, ps in modules[module_path].items():
        if name not in by_name:
            raise ConfigError(f"{where}: table {name!r} is not a table of {task_label(task)}")
        st = ps.sharding_type
        if st not in SHARDING_TYPES:
            raise ConfigError(f"{where}: table {name!r}: TorchRec sharding type {st} has no equivalent in "
                              f"recstack-sharding-plan/1 ({', '.join(SHARDING_TYPES)})")
        t = by_name[name]
        if ps.sharding_spec is None:
            ranks = list(ps.ranks) if ps.ranks else list(range(task.devices))
            sizes = [[t.rows, t.dim] for _ in ranks]
            offs = [[0, 0] for _ in ranks]
        else:
            shards = list(ps.sharding_spec.shards)
            sizes = [[int(x) for x in s.shard_sizes] for s in shards]
            offs = [[int(x) for x in s.shard_offsets] for s in shards]
            ranks = [int(s.placement.rank()) if s.placement is not None else -1 for s in shards]
            if ps.ranks and len(ps.ranks) == len(shards):
                ranks = [int(r) for r in ps.ranks]
            if any(r < 0 for r in ranks):
                raise ConfigError(f"{where}: table {name!r}: a shard has no rank")
        try:
            tables[name] = TableSharding(sharding_type=st, ranks=ranks, shard_sizes=sizes, shard_offsets=offs,
                                         compute_kernel=str(ps.compute_kernel))
        except ValueError as e:  # pydantic ValidationError
            raise ConfigError(f"{where}: table {name!r}: {str(e).splitlines()[-1].strip()}") from None
    missing = [n for n in by_name if n not in tables]
    if missing:
        raise ConfigError(f"{where}: {task_label(task)}'s table {missing[0]!r} is not in module "
                          f"{module_path!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    bad = [(n, r) for n, sh in tables.items() for r in sh.ranks if r >= task.devices]
    if bad:
        raise ConfigError(f"{where}: table {bad[0][0]!r} on rank {bad[0][1]}, but {task_label(task)} has "
                          f"{task.devices} devices")
    plan = ShardingPlan(planner=planner, task=task.id, devices=task.devices,
                        tables={t.name: tables[t.name] for t in task.tables})
    if check:
        check_plan(plan, task, where)
    return plan


# ---------------------------------------------------------------- files
def torchrec_plan_to_dict(tr_plan: Any) -> dict:
    """A readable JSON rendering: {module: {table: {sharding_type, compute_kernel, ranks, shards}}}."""
    modules = {}
    for path, mod in tr_plan.plan.items():
        modules[path] = {}
        for name, ps in mod.items():
            shards = None
            if ps.sharding_spec is not None:
                shards = [{"offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes),
                           "placement": str(s.placement)} for s in ps.sharding_spec.shards]
            modules[path][name] = {"sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                                   "ranks": list(ps.ranks) if ps.ranks is not None else None, "shards": shards}
    return {"format": RENDER_FORMAT, "modules": modules}


def torchrec_plan_from_dict(data: Any, where: str) -> Any:
    """The TorchRec ShardingPlan of a `torchrec_plan_to_dict` rendering."""
    _torchrec()
    from torch.distributed._shard.sharding_spec import EnumerableShardingSpec, ShardMetadata
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding
    from torchrec.distributed.types import ShardingPlan as TRShardingPlan

    if not isinstance(data, dict) or data.get("format") != RENDER_FORMAT or not isinstance(data.get("modules"), dict):
        raise ConfigError(f"{where}: format: expected {RENDER_FORMAT!r} with a 'modules' object")
    plan = {}
    for path, mod in data["modules"].items():
        tables = {}
        for name, d in (mod or {}).items():
            field = f"modules.{path or '(root)'}.{name}"
            try:
                spec = None
                if d.get("shards") is not None:
                    spec = EnumerableShardingSpec([ShardMetadata(shard_offsets=list(s["offsets"]),
                                                                 shard_sizes=list(s["sizes"]),
                                                                 placement=s["placement"]) for s in d["shards"]])
                tables[name] = ParameterSharding(sharding_type=d["sharding_type"], compute_kernel=d["compute_kernel"],
                                                 ranks=d.get("ranks"), sharding_spec=spec)
            except (KeyError, TypeError, ValueError, AttributeError, AssertionError, RuntimeError) as e:
                raise ConfigError(f"{where}: {field}: {type(e).__name__}: {e}") from None
        plan[path] = EmbeddingModuleShardingPlan(tables)
    return TRShardingPlan(plan=plan)


def rendered_path(out: str | Path) -> Path:
    """Where `save_torchrec_plan(…, out)` puts the readable JSON: OUT's stem + ".torchrec.json"."""
    out = Path(out)
    return out.with_name(out.stem + ".torchrec.json")


def save_torchrec_plan(tr_plan: Any, out: str | Path) -> tuple[Path, Path]:
    """`torch.save(tr_plan, OUT)` (a pickled torchrec.distributed.types.ShardingPlan; load it with
    `torch.load(OUT, weights_only=False)` where torchrec is installed) and its readable JSON
    rendering next to it (`rendered_path`). Both written atomically."""
    import torch

    out = Path(out)
    js = rendered_path(out)
    if out.suffix == ".json":
        raise ConfigError(f"--out {out}: give the torch.save file (e.g. plan.pt), not a .json name; the JSON "
                          f"rendering goes next to it as <stem>.torchrec.json")
    with atomic_open(out, "wb") as f:
        torch.save(tr_plan, f)
    atomic_write_json(js, torchrec_plan_to_dict(tr_plan))
    return out, js


def load_torchrec_plan(path: str | Path) -> Any:
    """A TorchRec ShardingPlan from a torch.save file (unpickled: trusted files only) or from the
    readable JSON rendering (any file whose content is JSON)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: TorchRec plan file not found")
    raw = p.read_bytes()
    if raw.lstrip()[:1] == b"{":
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: cannot read JSON ({e})") from None
        return torchrec_plan_from_dict(data, str(p))
    _torchrec()
    import torch

    try:
        obj = torch.load(p, weights_only=False, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        raise ConfigError(f"{p}: cannot load a torch.save file ({type(e).__name__}: {e})") from None
    from torchrec.distributed.types import ShardingPlan as TRShardingPlan

    if not isinstance(obj, TRShardingPlan):
        raise ConfigError(f"{p}: holds a {type(obj).__name__}, not a torchrec ShardingPlan")
    return obj
