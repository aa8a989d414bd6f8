"""Deterministic, shard-independent initialisation.

Every embedding table draws its weights from its own generator seeded by (seed, global table
index), so a sub-collection holding tables [3, 7] (one rank's shard) has bit-identical weights
to tables 3 and 7 of the full collection, whatever the sharding. Dense layers draw from one
generator seeded by `seed` alone, in construction order, independent of the tables.
Initial values are always drawn on the CPU and then moved, so they do not depend on the device.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_MASK = (1 << 63) - 1


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so (seed, table) pairs never collide trivially."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
        h = h * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & _MASK


def table_generator(seed: int, table_id: int) -> torch.Generator:
    """The CPU generator for global table `table_id`."""
    return torch.Generator().manual_seed(_mix(seed, 1, table_id))


def dense_generator(seed: int) -> torch.Generator:
    """The CPU generator for all dense (non-embedding) layers of a model."""
    return torch.Generator().manual_seed(_mix(seed, 2))


@torch.no_grad()
def init_table(
    rows: int, dim: int, seed: int, table_id: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference embedding init U(-sqrt(1/rows), sqrt(1/rows)), float32.

    Fills `out` (a contiguous [rows, dim] CPU tensor or view, e.g. a slice of a fused weight) in
    place when given, so no second copy of a large table is made; else returns a new tensor.
    Tensors on other devices are filled on the CPU and copied, so values never depend on device.
    """
    bound = math.sqrt(1.0 / rows)
    gen = table_generator(seed, table_id)
    if out is not None and out.device.type == "cpu" and out.is_contiguous() and out.dtype == torch.float32:
        if tuple(out.shape) != (rows, dim):
            raise ValueError(f"init_table: out has shape {tuple(out.shape)}, expected ({rows}, {dim})")
        return out.uniform_(-bound, bound, generator=gen)
    w = torch.empty(rows, dim, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
    if out is not None:
        out.copy_(w)
        return out
    return w


@torch.no_grad()
def init_linear(layer: nn.Linear, gen: torch.Generator | None) -> nn.Linear:
    """Reference Linear init: W ~ N(0, sqrt(2/(out+in))), b ~ N(0, sqrt(1/out)).

    Values are drawn on the CPU from `gen` (the global RNG when None) and copied in place.
    """
    out_f, in_f = layer.weight.shape
    w = torch.empty(out_f, in_f).normal_(0.0, math.sqrt(2.0 / (out_f + in_f)), generator=gen)
    layer.weight.copy_(w)
    if layer.bias is not None:
        b = torch.empty(out_f).normal_(0.0, math.sqrt(1.0 / out_f), generator=gen)
        layer.bias.copy_(b)
    return layer
