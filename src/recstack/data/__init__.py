"""Data: batch types, the binary store, Criteo preprocessing, synthetic data, table statistics."""

from recstack.data.batch import Batch, SparseBatch
from recstack.data.store import Store, StoreTable, StoreWriter

__all__ = ["Batch", "SparseBatch", "Store", "StoreTable", "StoreWriter"]
