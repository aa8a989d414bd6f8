"""Typed specs shared by every capability, and the shipped configs."""

from recstack.spec.device import DeviceSpec, Topology
from recstack.spec.loader import (
    dump_yaml,
    list_hardware_configs,
    list_model_configs,
    load_config,
    load_device,
    load_model_spec,
    load_topology,
    read_yaml,
    validate,
)
from recstack.spec.model import DTYPE_BYTES, ModelSpec, TableGroup, TableSpec
from recstack.spec.sharding import ShardingPlan, ShardTable, ShardTask, TablePool, TableSharding, TaskSet
from recstack.spec.train import TrainSpec

__all__ = [
    "DTYPE_BYTES", "DeviceSpec", "ModelSpec", "ShardTable", "ShardTask", "ShardingPlan", "TableGroup", "TablePool",
    "TableSharding", "TableSpec", "TaskSet", "Topology", "TrainSpec",
    "dump_yaml", "list_hardware_configs", "list_model_configs", "load_config", "load_device",
    "load_model_spec", "load_topology", "read_yaml", "validate",
]
