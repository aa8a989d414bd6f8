"""Training: the trainer, metrics, LR schedule, hybrid-parallel (multi-process) runs, run directories.

Public API:
- `train(spec, train_spec, data, out, device, backend, progress, nproc, plan)` -> summary dict
- `Trainer(spec, train_spec, backend, device)`: `.step(batch)` (one full training step, no host
  sync; what benchmarks time), `.evaluate(store, split)`, `.model`
- metrics: `auc`, `logloss`, `normalized_entropy`, `binary_metrics`; schedule: `lr_at`
- placement for model-parallel tables: `place_tables(tables, world_size, plan)`, `load_plan(path)`
- checkpoints: `CheckpointStore(root, keep)` (`save`, `save_rows`, `load_latest`, `verify`, `prune`,
  `clean`), `BackgroundSaver(store)`, `CheckpointError`
- failure emulation (CPR): `FailureModel` (MTBF or trace file), `CostModel`, `young_interval`,
  `cpr_interval`, `expected_pls`, `expected_overhead`, `choose_policy`
"""

from recstack.train.checkpoint import BackgroundSaver, CheckpointError, CheckpointInfo, CheckpointStore
from recstack.train.dist import load_plan, place_tables
from recstack.train.failures import (
    CostModel,
    Failure,
    FailureModel,
    choose_policy,
    cpr_interval,
    expected_overhead,
    expected_pls,
    young_interval,
)
from recstack.train.metrics import auc, binary_metrics, entropy, logloss, normalized_entropy
from recstack.train.run import RunOptions, check_store, fit, train
from recstack.train.schedule import lr_at
from recstack.train.trainer import Trainer, build_model_for

__all__ = [
    "BackgroundSaver",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStore",
    "CostModel",
    "Failure",
    "FailureModel",
    "RunOptions",
    "Trainer",
    "auc",
    "binary_metrics",
    "build_model_for",
    "check_store",
    "choose_policy",
    "cpr_interval",
    "entropy",
    "expected_overhead",
    "expected_pls",
    "fit",
    "load_plan",
    "logloss",
    "lr_at",
    "normalized_entropy",
    "place_tables",
    "train",
    "young_interval",
]
