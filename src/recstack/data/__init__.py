"""Data: batch types, the binary store, Criteo preprocessing, synthetic data, table statistics."""

from recstack.data.batch import Batch, SparseBatch
from recstack.data.criteo import (
    PreprocessReport,
    format_criteo_lines,
    kaggle_splits,
    preprocess_criteo,
    terabyte_splits,
)
from recstack.data.stats import (
    BIN_LABELS,
    render_stats,
    reuse_histograms,
    simulate_reuse_bins,
    table_stats,
)
from recstack.data.store import Store, StoreTable, StoreWriter
from recstack.data.synth import SyntheticGenerator, SynthReport, TeacherConfig, split_bounds, synthesize

__all__ = [
    "BIN_LABELS", "Batch", "PreprocessReport", "SparseBatch", "Store", "StoreTable", "StoreWriter",
    "SynthReport", "SyntheticGenerator", "TeacherConfig", "format_criteo_lines", "kaggle_splits",
    "preprocess_criteo", "render_stats", "reuse_histograms", "simulate_reuse_bins", "split_bounds",
    "synthesize", "table_stats", "terabyte_splits",
]
