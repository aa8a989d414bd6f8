"""Feature interactions between the bottom-MLP output and the pooled embeddings."""

from __future__ import annotations

import torch
from torch import nn

from recstack.models.init import init_linear


def dot_output_width(num_features: int, dim: int) -> int:
    """Width of the `dot` interaction: F(F-1)/2 pairwise products plus the dense vector."""
    return num_features * (num_features - 1) // 2 + dim


class DotInteraction(nn.Module):
    """Strict lower triangle of the pairwise dot products of [x, e_1..e_T], concatenated after x.

    Computes the full [F, F] Gram matrix with one bmm (F*F*d multiply-accumulates per sample)
    and gathers its F(F-1)/2 strict-lower-triangle entries (row-major order, as the reference).
    """

    fast: bool = True  # False: always the stack + _GramTril path (for A/B timing)

    def __init__(self, num_features: int) -> None:
        super().__init__()
        li, lj = torch.tril_indices(num_features, num_features, offset=-1)
        self.register_buffer("flat_idx", li * num_features + lj, persistent=False)
        self.register_buffer("flat_idx_t", lj * num_features + li, persistent=False)
        self.num_features = num_features

    def forward(self, x: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        if self.fast and x.dim() == 2 and len(pooled) + 1 == self.num_features:
            tiled = _tiled_base(pooled, x.shape[0], x.shape[-1])
            if tiled is not None:
                return _DotFromTiled.apply(x, tiled, self.flat_idx, self.flat_idx_t)
        feats = torch.stack([x, *pooled], dim=1)  # [B, F, d]
        return torch.cat([x, _GramTril.apply(feats, self.flat_idx)], dim=1)


def _tiled_base(pooled: list[torch.Tensor], b: int, d: int) -> torch.Tensor | None:
    """The [T*B, d] tensor whose consecutive row blocks the pooled outputs are, or None.

    The fused embedding backend pools every table in one call and hands out [B, d] row blocks
    of its output; reading that tensor directly skips a stack in the forward and the blocks'
    split backward (a cat) in the backward.
    """
    if not pooled or pooled[0]._base is None:
        return None
    base = pooled[0]._base
    if base.dim() != 2 or tuple(base.shape) != (len(pooled) * b, d) or not base.is_contiguous():
        return None
    off = base.storage_offset()
    for t, p in enumerate(pooled):
        if p._base is not base or tuple(p.shape) != (b, d) or p.storage_offset() != off + t * b * d:
            return None
    return base


class _DotFromTiled(torch.autograd.Function):
    """[x, strict lower triangle of [x, e_1..e_T] Gram matrices] from x [B, d] and tiled [T*B, d].

    Same arithmetic as stack + `_GramTril` + cat (one bmm each way; bit-identical results); the
    backward writes G + G^T straight from the incoming gradient (two index copies) and returns the
    tables' gradient in the tiled layout the embedding lookup produced.

    The output is a [B, d + pairs] view of a feature-major [d + pairs, B] tensor, the layout the
    top MLP's fast path reads without a copy (its first GEMMs run faster on it than on a
    row-major [B, 52]: perf, ~0.4 ms of a DLRM benchmark step); values are the same either way.
    The gradient for x comes back feature-major too, the layout of the bottom MLP's output.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, tiled: torch.Tensor, flat_idx: torch.Tensor, flat_idx_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, d = x.shape
        t = tiled.shape[0] // b
        feats = x.new_empty(b, t + 1, d)
        feats[:, 0].copy_(x)
        feats[:, 1:].copy_(tiled.view(t, b, d).transpose(0, 1))
        gram = torch.bmm(feats, feats.transpose(1, 2)).view(b, -1)
        ctx.save_for_backward(feats, flat_idx, flat_idx_t)
        zt = x.new_empty(d + flat_idx.numel(), b)
        zt[:d].copy_(x.t())
        torch.index_select(gram.t(), 0, flat_idx, out=zt[d:])
        return zt.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        feats, flat_idx, flat_idx_t = ctx.saved_tensors
        b, f, d = feats.shape
        gp = g[:, d:]
        sym = g.new_zeros(b, f * f)
        sym.index_copy_(1, flat_idx, gp).index_copy_(1, flat_idx_t, gp)  # G + G^T (disjoint entries)
        gfeats = torch.bmm(sym.view(b, f, f), feats)
        gxt = torch.add(g[:, :d].t(), gfeats[:, 0].t())  # feature-major [d, B] when g is (the top MLP's)
        gtiled = gfeats[:, 1:].transpose(0, 1).reshape((f - 1) * b, d)
        return gxt.t(), gtiled, None, None


class _GramTril(torch.autograd.Function):
    """Entries `flat_idx` of each sample's flattened Gram matrix feats @ feats.T, with a one-bmm backward.

    Autograd's own backward of bmm + index_select runs two more bmm calls and an index_add over
    a zero [B, F*F] tensor; since d(T T^T) = (G + G^T) T, one bmm suffices. Small batched GEMMs
    are slow on CPU (~0.2 ms each for B=2048, F=9, d=16), so this saves about a third of the
    interaction's time. Same arithmetic up to float rounding.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(feats, flat_idx)
        return torch.bmm(feats, feats.transpose(1, 2)).flatten(1).index_select(1, flat_idx)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        feats, flat_idx = ctx.saved_tensors
        b, f, _ = feats.shape
        g = g.to(feats.dtype)  # under autocast the product (hence g) is bf16 while feats may be fp32
        gg = g.new_zeros(b, f * f).index_add_(1, flat_idx, g).view(b, f, f)
        return torch.bmm(gg + gg.transpose(1, 2), feats), None


class CrossNetV2(nn.Module):
    """DCNv2 low-rank cross network: x_{l+1} = x0 * (U (V x_l) + b) + x_l, for `layers` layers.

    V: [rank, D] (no bias), U: [D, rank] with bias b; reference Linear initialisation.
    """

    def __init__(self, width: int, layers: int, rank: int, seed_gen: torch.Generator | None = None) -> None:
        super().__init__()
        self.v = nn.ModuleList(init_linear(nn.Linear(width, rank, bias=False), seed_gen) for _ in range(layers))
        self.u = nn.ModuleList(init_linear(nn.Linear(rank, width), seed_gen) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, u in zip(self.v, self.u):
            x = x0 * u(v(x)) + x
        return x
