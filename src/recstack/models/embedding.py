"""Embedding-bag collection with pluggable backends.

All backends hold the same per-table weights (initialised per global table index, see
`recstack.models.init`) and return the same sum-pooled outputs: one [B, dim_t] tensor per
table, in table order. They differ in how the lookups run:

- "torch": one `nn.EmbeddingBag(mode="sum", sparse=True)` per table, one call per table.
- "fused": tables of equal dim share one weight tensor; per-table row offsets are added to
  the indices and ONE `F.embedding_bag` call per dim group pools every table (sparse grad).
- "fbgemm": FBGEMM's `SplitTableBatchedEmbeddingBagsCodegen` (table-batched kernel) with its
  fused optimizer. The embedding optimizer (EXACT_SGD or EXACT_ROWWISE_ADAGRAD, constructor
  argument `fbgemm_optimizer`) runs INSIDE backward: `loss.backward()` already updates the
  tables, so a trainer must not give `sparse_parameters()` to its own optimizer (check
  `fused_optimizer`) and sets the embedding learning rate with `set_learning_rate()`.
  Needs fbgemm_gpu (imported lazily) and dims that are multiples of 4.

Weights are always float32 (TableSpec.dtype describes storage for sizing, not training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import SparseBatch
from recstack.errors import ConfigError
from recstack.models.hugepages import empty_table
from recstack.models.init import init_table
from recstack.spec import TableSpec

if TYPE_CHECKING:
    from torchrec import KeyedJaggedTensor

FBGEMM_OPTIMIZERS = ("sgd", "rowwise_adagrad")
_fbgemm_error: str | None = None
_fbgemm_checked = False


def _fbgemm_available() -> bool:
    """Whether fbgemm_gpu imports (checked once, on first need: importing it costs ~0.3 s)."""
    global _fbgemm_checked, _fbgemm_error
    if not _fbgemm_checked:
        _fbgemm_checked = True
        try:
            import fbgemm_gpu  # noqa: F401
        except (ImportError, OSError, RuntimeError, AttributeError) as e:  # missing, or built for another torch
            _fbgemm_error = f"{type(e).__name__}: {e}"
    return _fbgemm_error is None


def available_backends() -> list[str]:
    """Backends usable in this environment ("fbgemm" only when fbgemm_gpu imports)."""
    return ["torch", "fused"] + (["fbgemm"] if _fbgemm_available() else [])


def __getattr__(name: str) -> object:
    if name == "BACKENDS":  # computed on first access, so importing recstack.models stays light
        return available_backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EmbeddingBagCollection(nn.Module):
    """Sum-pooled embedding bags over `tables`, one output per table.

    `table_ids` are the global indices of `tables` in the full model (default 0..T-1); they seed
    each table's initialisation, so any subset reproduces the full collection's weights.
    forward(SparseBatch | KeyedJaggedTensor) -> list of [B, dim_t] tensors in table order
    (a KJT is matched to the tables by key = table name, so it may hold more features; a
    SparseBatch over more tables than the collection holds is narrowed to `table_ids`).
    """

    def __init__(
        self,
        tables: list[TableSpec],
        backend: str = "torch",
        seed: int = 0,
        table_ids: list[int] | None = None,
        device: torch.device | str = "cpu",
        fbgemm_optimizer: str = "sgd",
        learning_rate: float = 0.01,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if backend not in ("torch", "fused", "fbgemm"):
            raise ConfigError(f"backend: unknown embedding backend {backend!r} (choose torch, fused, fbgemm)")
        if table_ids is None:
            table_ids = list(range(len(tables)))
        if len(table_ids) != len(tables):
            raise ValueError(f"table_ids has {len(table_ids)} entries for {len(tables)} tables")
        self.tables = [t.model_copy() for t in tables]
        self.table_ids = list(table_ids)
        self.names = [t.name for t in tables]
        self.dims = [t.dim for t in tables]
        self.backend = backend
        self.seed = seed
        device = torch.device(device)
        shapes = [(t.rows, t.dim) for t in tables]
        if backend == "torch":
            self._impl: nn.Module = _TorchBags(shapes, device)
        elif backend == "fused":
            self._impl = _FusedBags(shapes, device)
        else:
            if not _fbgemm_available():
                raise ConfigError(
                    f"backend: 'fbgemm' needs fbgemm_gpu matching this torch (pip install fbgemm-gpu-cpu); "
                    f"importing it failed with {_fbgemm_error}"
                )
            self._impl = _FbgemmBags(shapes, self.names, device, fbgemm_optimizer, learning_rate, eps)
        # Fill every table in place from its own (seed, global index) generator: no second copy.
        for t, (spec, gid) in enumerate(zip(tables, table_ids)):
            init_table(spec.rows, spec.dim, seed, gid, out=self._impl.table_weight(t).detach())

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    @property
    def fused_optimizer(self) -> bool:
        """True when the embedding optimizer runs inside backward (fbgemm): do not step sparse params."""
        return self.backend == "fbgemm"

    def set_learning_rate(self, lr: float) -> None:
        """Learning rate of the fused embedding optimizer (fbgemm backend only)."""
        if not self.fused_optimizer:
            raise RuntimeError(f"backend {self.backend!r} has no fused optimizer; step its parameters instead")
        self._impl.set_learning_rate(lr)

    def get_learning_rate(self) -> float:
        if not self.fused_optimizer:
            raise RuntimeError(f"backend {self.backend!r} has no fused optimizer")
        return self._impl.get_learning_rate()

    def table_weight(self, t: int) -> torch.Tensor:
        """Table t's [rows, dim] weight (a view; read it under no_grad, write with load_table_weight)."""
        return self._impl.table_weight(t)

    def table_location(self, t: int) -> tuple[int, int, int]:
        """Where table t lives: (index into `sparse_parameters()`, first row, rows).

        Per-row optimiser state and saved copies of the parameters use the same layout, so this
        maps a table to its rows in any of them.
        """
        if not hasattr(self._impl, "table_location"):
            raise NotImplementedError(f"backend {self.backend!r} does not expose table locations")
        return self._impl.table_location(t)

    @torch.no_grad()
    def load_table_weight(self, t: int, weight: torch.Tensor) -> None:
        """Copy a [rows, dim] tensor into table t."""
        dst = self._impl.table_weight(t)
        if tuple(weight.shape) != tuple(dst.shape):
            raise ValueError(f"table {self.names[t]}: weight shape {tuple(weight.shape)} != {tuple(dst.shape)}")
        dst.copy_(weight.to(dst.device, dst.dtype))

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding weights (sparse gradients for torch/fused; updated in backward for fbgemm)."""
        return self._impl.weight_parameters()

    def _as_batch(self, sparse: SparseBatch | KeyedJaggedTensor) -> SparseBatch:
        if not isinstance(sparse, SparseBatch):  # a TorchRec KeyedJaggedTensor
            sparse = SparseBatch.from_kjt(sparse, keys=self.names)
        if sparse.num_tables != self.num_tables:
            if sparse.num_tables > max(self.table_ids, default=-1):
                return sparse.select_tables(self.table_ids)  # a full batch given to one shard
            raise ValueError(f"batch has {sparse.num_tables} tables, collection has {self.num_tables}")
        return sparse

    def forward(self, sparse: SparseBatch | KeyedJaggedTensor) -> list[torch.Tensor]:
        return self._impl(self._as_batch(sparse))


class _TorchBags(nn.Module):
    def __init__(self, shapes: list[tuple[int, int]], device: torch.device) -> None:
        super().__init__()
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(
                rows, dim, mode="sum", sparse=True, include_last_offset=True,
                _weight=empty_table(rows, dim, device),  # filled by the collection
            )
            for rows, dim in shapes
        )

    def table_weight(self, t: int) -> torch.Tensor:
        return self.bags[t].weight

    def table_location(self, t: int) -> tuple[int, int, int]:
        return t, 0, self.bags[t].weight.shape[0]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [b.weight for b in self.bags]

    def forward(self, sb: SparseBatch) -> list[torch.Tensor]:
        out = []
        for t, bag in enumerate(self.bags):
            idx, off = sb.table(t)
            out.append(bag(idx, off))
        return out


class _FusedBags(nn.Module):
    """Tables grouped by dim; each group is one weight tensor and one embedding_bag call."""

    def __init__(self, shapes: list[tuple[int, int]], device: torch.device) -> None:
        super().__init__()
        dims = [d for _, d in shapes]
        self.groups: list[list[int]] = []
        by_dim: dict[int, int] = {}
        for t, d in enumerate(dims):
            if d not in by_dim:
                by_dim[d] = len(self.groups)
                self.groups.append([])
            self.groups[by_dim[d]].append(t)
        self.num_tables = len(shapes)
        self._shift_cache: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}  # group -> (counts, shift)
        self.weights = nn.ParameterList()
        self.place: list[tuple[int, int, int]] = [(0, 0, 0)] * len(shapes)  # (group, row offset, rows)
        for g, members in enumerate(self.groups):
            row = 0
            for t in members:
                self.place[t] = (g, row, shapes[t][0])
                row += shapes[t][0]
            self.weights.append(nn.Parameter(empty_table(row, dims[members[0]], device)))
            offs = torch.tensor([self.place[t][1] for t in members], dtype=torch.long, device=device)
            self.register_buffer(f"row_offsets_{g}", offs, persistent=False)

    def table_weight(self, t: int) -> torch.Tensor:
        g, start, rows = self.place[t]
        return self.weights[g][start : start + rows]

    def table_location(self, t: int) -> tuple[int, int, int]:
        return self.place[t]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)

    def _shift(self, g: int, per_table: torch.Tensor) -> torch.Tensor:
        """Each index's table row offset in group g's weight; on CPU reused while the per-table
        index counts repeat (fixed pooling: every batch), which saves a repeat_interleave per step."""
        offs = getattr(self, f"row_offsets_{g}")
        if per_table.device.type != "cpu":
            return torch.repeat_interleave(offs, per_table)
        counts = tuple(per_table.tolist())
        hit = self._shift_cache.get(g)
        if hit is None or hit[0] != counts or hit[1].device != offs.device:
            hit = self._shift_cache[g] = (counts, torch.repeat_interleave(offs, per_table))
        return hit[1]

    def forward(self, sb: SparseBatch) -> list[torch.Tensor]:
        b = sb.batch_size
        out: list[torch.Tensor | None] = [None] * self.num_tables
        for g, members in enumerate(self.groups):
            sub = sb if len(self.groups) == 1 else sb.select_tables(members)
            offsets = sub.offsets
            # number of indices of each table: the offset at each table boundary
            bounds = offsets[::b]
            per_table = bounds[1:] - bounds[:-1]
            shift = self._shift(g, per_table)
            pooled = F.embedding_bag(
                sub.indices + shift, self.weights[g], offsets, mode="sum", sparse=True,
                per_sample_weights=None, include_last_offset=True,
            )
            # one split, not a slice per table: each slice's backward would zero-fill a tensor of
            # the whole pooled output (T slices -> O(T^2) memory traffic); split's is one cat.
            # The dot interaction recognises these row blocks and reads `pooled` itself.
            for t, part in zip(members, pooled.split(b)):
                out[t] = part
        return out  # type: ignore[return-value]


class _FbgemmBags(nn.Module):
    def __init__(
        self, shapes: list[tuple[int, int]], names: list[str], device: torch.device, optimizer: str,
        lr: float, eps: float,
    ) -> None:
        super().__init__()
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        opt = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}
        if optimizer not in opt:
            raise ConfigError(f"fbgemm_optimizer: {optimizer!r} is not one of {', '.join(opt)}")
        for (_, dim), n in zip(shapes, names):
            if dim % 4:
                raise ConfigError(f"tables: {n} has dim {dim}; the fbgemm backend needs a multiple of 4")
        if device.type == "cpu":
            loc, comp = EmbeddingLocation.HOST, ComputeDevice.CPU
        else:
            loc, comp = EmbeddingLocation.DEVICE, ComputeDevice.CUDA
        self.dims = [d for _, d in shapes]
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(rows, dim, loc, comp) for rows, dim in shapes],
            optimizer=opt[optimizer],
            learning_rate=lr,
            eps=eps,
            pooling_mode=PoolingMode.SUM,
            device=device,
        )

    def set_learning_rate(self, lr: float) -> None:
        self.tbe.set_learning_rate(lr)

    def get_learning_rate(self) -> float:
        return float(self.tbe.get_learning_rate())

    def table_weight(self, t: int) -> torch.Tensor:
        return self.tbe.split_embedding_weights()[t]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.tbe.named_parameters() if n.startswith("weights_") and p.numel() > 0]

    def forward(self, sb: SparseBatch) -> list[torch.Tensor]:
        pooled = self.tbe(sb.indices, sb.offsets)  # [B, sum(dims)], sample-major
        return list(torch.split(pooled, self.dims, dim=1))
