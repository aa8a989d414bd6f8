"""The DeepRecSys model zoo beyond DLRM: NCF, Wide & Deep, Multi-task WnD, DIN, DIEN.

Every model consumes the same inputs as DLRM (dense [B, dense_features] and one sum-pooled
bag per table) so data generation, training and serving treat them alike. Activations are
ReLU throughout (the original papers' PReLU/Dice are a detail that does not change the
systems profile). The two-class outputs of DIN and DIEN are returned as the single logit
l1 - l0, since softmax over two classes equals sigmoid(l1 - l0), so BCE applies.

DIN/DIEN candidate item: the table named `candidate` when the spec has one (the shipped DIN
config does), else the first non-behaviour table whose dim equals the behaviour tables' dim
(for the shipped DIEN config: `big_0`). The candidate also stays among the "other" tables that
are concatenated into the top MLP input.
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.errors import ConfigError
from recstack.models.base import RecModel
from recstack.models.dlrm import bottom_block
from recstack.models.embedding import EmbeddingBagCollection
from recstack.models.init import init_linear
from recstack.models.mlp import MLP
from recstack.spec import ModelSpec


def _table_ids(spec: ModelSpec, names: list[str], field: str) -> list[int]:
    ids: list[int] = []
    index = {t.name: i for i, t in enumerate(spec.tables)}
    for n in names:
        found = spec.tables_matching(n)
        if not found:
            raise ConfigError(f"{field}: table {n!r} is not among the model's tables")
        ids.extend(index[t.name] for t in found)
    return sorted(set(ids))


def behaviour_layout(spec: ModelSpec) -> tuple[list[int], int, list[int]]:
    """(behaviour table indices, candidate table index, other table indices) for DIN/DIEN."""
    if not spec.behaviour_tables:
        raise ConfigError(f"behaviour_tables: family {spec.family} needs at least one behaviour table")
    beh = _table_ids(spec, spec.behaviour_tables, "behaviour_tables")
    dims = {spec.tables[i].dim for i in beh}
    if len(dims) != 1:
        raise ConfigError(f"behaviour_tables: all behaviour tables need one dim, got {sorted(dims)}")
    d = dims.pop()
    others = [i for i in range(spec.num_tables) if i not in set(beh)]
    named = [i for i in others if spec.tables[i].name == "candidate"]
    matching = [i for i in others if spec.tables[i].dim == d]
    if named and spec.tables[named[0]].dim != d:
        raise ConfigError(f"tables: candidate has dim {spec.tables[named[0]].dim}, behaviours have {d}")
    if not named and not matching:
        raise ConfigError(f"tables: {spec.family} needs a non-behaviour candidate table of dim {d}")
    return beh, (named or matching)[0], others


def _two_class_logit(x: torch.Tensor) -> torch.Tensor:
    return x[:, 1] - x[:, 0] if x.shape[1] == 2 else x.squeeze(-1)


def _check_last(spec: ModelSpec, allowed: tuple[int, ...]) -> None:
    if spec.top_mlp[-1] not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ConfigError(f"top_mlp: family {spec.family} needs the last size {want}, got {spec.top_mlp[-1]}")


class NCF(RecModel):
    """GMF branch (elementwise product of the `ncf_mf_tables` embeddings) and MLP branch
    (top_mlp over the other embeddings concatenated with the dense input); a final Linear over
    [gmf, mlp_out] gives one logit."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, 1)
        if not spec.ncf_mf_tables:
            raise ConfigError("ncf_mf_tables: family ncf needs the matrix-factorisation tables")
        self.mf_ids = _table_ids(spec, spec.ncf_mf_tables, "ncf_mf_tables")
        dims = {spec.tables[i].dim for i in self.mf_ids}
        if len(dims) != 1:
            raise ConfigError(f"ncf_mf_tables: the GMF tables need one dim, got {sorted(dims)}")
        self.mlp_ids = [i for i in range(spec.num_tables) if i not in set(self.mf_ids)]
        self.bottom = bottom_block(spec, gen)
        width = spec.bottom_out + sum(spec.tables[i].dim for i in self.mlp_ids)
        self.top = MLP([width, *spec.top_mlp], relu_last=True, seed_gen=gen)
        self.final = init_linear(nn.Linear(dims.pop() + spec.top_mlp[-1], 1), gen)

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        gmf = pooled[self.mf_ids[0]]
        for i in self.mf_ids[1:]:
            gmf = gmf * pooled[i]
        mlp = self.top(torch.cat([self.bottom(dense), *(pooled[i] for i in self.mlp_ids)], dim=1))
        return self._logits(self.final(torch.cat([gmf, mlp], dim=1)))


class WideAndDeep(RecModel):
    """Wide: one Linear over the dense features; deep: top_mlp over concat(dense, embeddings);
    the logit is their sum."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, 1)
        _check_last(spec, (1,))
        if spec.dense_features == 0:
            raise ConfigError("dense_features: family wnd needs dense features for its wide part")
        self.wide = init_linear(nn.Linear(spec.dense_features, 1), gen)
        self.bottom = bottom_block(spec, gen)
        width = spec.bottom_out + sum(t.dim for t in spec.tables)
        self.top = MLP([width, *spec.top_mlp], relu_last=False, seed_gen=gen)

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        deep = self.top(torch.cat([self.bottom(dense), *pooled], dim=1))
        return self._logits(self.wide(dense) + deep)


class MultiTaskWideAndDeep(RecModel):
    """Shared trunk (top_mlp with ReLU over concat(dense, embeddings)), then `num_tasks` towers
    of sizes `task_tower` + 1 output each; logits [B, num_tasks]."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, spec.num_tasks)
        self.bottom = bottom_block(spec, gen)
        width = spec.bottom_out + sum(t.dim for t in spec.tables)
        self.trunk = MLP([width, *spec.top_mlp], relu_last=True, seed_gen=gen)
        self.towers = nn.ModuleList(
            MLP([spec.top_mlp[-1], *spec.task_tower, 1], relu_last=False, seed_gen=gen)
            for _ in range(spec.num_tasks)
        )

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        h = self.trunk(torch.cat([self.bottom(dense), *pooled], dim=1))
        out = torch.cat([tower(h) for tower in self.towers], dim=1)
        return out.squeeze(-1) if self.num_outputs == 1 else out


class DIN(RecModel):
    """Deep Interest Network: the behaviour tables' pooled vectors form a sequence; an attention
    MLP over [b, c, b*c, b-c] (c = candidate) scores each behaviour; the weighted sum (one bmm;
    weights not softmax-normalised, as in DIN, so intensity of interest is kept) joins the dense
    input and the other tables' embeddings into the top MLP."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, 1)
        _check_last(spec, (1, 2))
        self.beh_ids, self.cand_id, self.other_ids = behaviour_layout(spec)
        d = spec.tables[self.beh_ids[0]].dim
        self.bottom = bottom_block(spec, gen)
        self.attention = MLP([4 * d, *spec.attention_mlp, 1], relu_last=False, seed_gen=gen)
        width = spec.bottom_out + sum(spec.tables[i].dim for i in self.other_ids) + d
        self.top = MLP([width, *spec.top_mlp], relu_last=False, seed_gen=gen)

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        beh = torch.stack([pooled[i] for i in self.beh_ids], dim=1)  # [B, L, d]
        cand = pooled[self.cand_id].unsqueeze(1).expand_as(beh)
        w = self.attention(torch.cat([beh, cand, beh * cand, beh - cand], dim=2))  # [B, L, 1]
        interest = torch.bmm(w.transpose(1, 2), beh).squeeze(1)  # [B, d]
        x = torch.cat([self.bottom(dense), *(pooled[i] for i in self.other_ids), interest], dim=1)
        return _two_class_logit(self.top(x))


class GRULayer(nn.Module):
    """A single-layer GRU written out step by step (PyTorch's gate equations), optionally with
    attentional update gates (AUGRU: the update toward the new state is scaled by a_t).

    Matmuls per sample: L*(in*3H) for the input projection (one matmul over all steps) and
    L*(H*3H) for the hidden projection, step by step (including the first, from h0 = 0).
    """

    def __init__(self, input_size: int, hidden: int, gen: torch.Generator | None) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = init_linear(nn.Linear(input_size, 3 * hidden), gen)
        self.hh = init_linear(nn.Linear(hidden, 3 * hidden), gen)

    def forward(self, x: torch.Tensor, att: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, steps, _ = x.shape
        gi = self.ih(x)  # [B, L, 3H]
        h = x.new_zeros(b, self.hidden)
        states = []
        for t in range(steps):
            gh = self.hh(h)
            ir, iz, inn = gi[:, t].chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r = torch.sigmoid(ir + hr)
            z = torch.sigmoid(iz + hz)
            n = torch.tanh(inn + r * hn)
            u = 1 - z if att is None else att[:, t : t + 1] * (1 - z)
            h = h + u * (n - h)
            states.append(h)
        return torch.stack(states, dim=1), h


class DIEN(RecModel):
    """Deep Interest Evolution Network: a GRU (hidden `gru_hidden`) extracts interests from the
    behaviour sequence; each hidden state is scored against the candidate (softmax over steps of
    h_t . W c); an AUGRU evolves the interests with those scores; its final state joins the
    dense input and the other tables' embeddings into the top MLP."""

    def __init__(self, spec: ModelSpec, embeddings: EmbeddingBagCollection, gen: torch.Generator) -> None:
        super().__init__(spec, embeddings, 1)
        _check_last(spec, (1, 2))
        self.beh_ids, self.cand_id, self.other_ids = behaviour_layout(spec)
        d, h = spec.tables[self.beh_ids[0]].dim, spec.gru_hidden
        self.bottom = bottom_block(spec, gen)
        self.extractor = GRULayer(d, h, gen)
        self.att_proj = init_linear(nn.Linear(d, h, bias=False), gen)
        self.evolution = GRULayer(h, h, gen)
        width = spec.bottom_out + sum(spec.tables[i].dim for i in self.other_ids) + h
        self.top = MLP([width, *spec.top_mlp], relu_last=False, seed_gen=gen)

    def dense_forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        beh = torch.stack([pooled[i] for i in self.beh_ids], dim=1)  # [B, L, d]
        states, _ = self.extractor(beh)  # [B, L, H]
        q = self.att_proj(pooled[self.cand_id]).unsqueeze(2)  # [B, H, 1]
        att = torch.softmax(torch.bmm(states, q).squeeze(2), dim=1)  # [B, L]
        _, final = self.evolution(states, att)
        x = torch.cat([self.bottom(dense), *(pooled[i] for i in self.other_ids), final], dim=1)
        return _two_class_logit(self.top(x))
