"""Sizes and compute of a model, computed from its spec alone (never allocates the tables).

Definitions (per sample, forward pass):
- `dense_flops_per_sample` = 2 x the multiply-accumulates of every matrix product in the dense
  part: each Linear (in*out; biases, activations and other elementwise work not counted), the
  dot interaction's bmm (the full F x F Gram matrix: F*F*d, F = tables + 1), the DCNv2 cross
  layers (V: D*rank, U: rank*D each), DIN's attention MLP (once per behaviour) and its
  attention-weighted sum (a bmm, L*d), DIEN's GRUs (input projection L*in*3H, hidden
  projection L*H*3H each) and its attention (candidate projection d*H, scores L*H).
  This is what torch.utils.flop_counter.FlopCounterMode reports for `dense_forward` at batch 1.
- `embedding_lookups_per_sample` = sum of the tables' mean pooling factors.
- `embedding_bytes_per_sample` = rows read per sample x dim x dtype bytes.
- `params` = embedding parameters (sum rows*dim) + `dense_params` (weights and biases).
- `embedding_bytes` uses each table's dtype.
"""

from __future__ import annotations

from typing import Any

from recstack.models.interaction import dot_output_width
from recstack.spec import ModelSpec


def _linear(name: str, n_in: int, n_out: int, bias: bool = True, times: int = 1) -> dict[str, Any]:
    shape = f"{n_in} x {n_out}" + (f" (x{times} per sample)" if times > 1 else "")
    return {
        "name": name, "shape": shape, "params": n_in * n_out + (n_out if bias else 0),
        "macs": times * n_in * n_out,
    }


def _mlp(name: str, sizes: list[int], times: int = 1) -> list[dict[str, Any]]:
    return [_linear(f"{name}.{i}", sizes[i], sizes[i + 1], times=times) for i in range(len(sizes) - 1)]


def _bottom(spec: ModelSpec) -> list[dict[str, Any]]:
    return _mlp("bottom_mlp", [spec.dense_features, *spec.bottom_mlp]) if spec.bottom_mlp else []


def _op(name: str, shape: str, macs: int, params: int = 0) -> dict[str, Any]:
    return {"name": name, "shape": shape, "params": params, "macs": macs}


def _gru(name: str, steps: int, n_in: int, h: int) -> list[dict[str, Any]]:
    return [_linear(f"{name}.input", n_in, 3 * h, times=steps), _linear(f"{name}.hidden", h, 3 * h, times=steps)]


def dense_layers(spec: ModelSpec) -> list[dict[str, Any]]:
    """The dense part's layers in forward order: name, shape, params and multiply-accumulates."""
    from recstack.models.zoo import behaviour_layout  # validates the behaviour layout

    layers = _bottom(spec)
    d = spec.bottom_out
    emb_width = sum(t.dim for t in spec.tables)
    fam = spec.family
    if fam == "dlrm":
        if spec.interaction == "dot":
            f = spec.num_tables + 1
            layers.append(_op("interaction.dot", f"bmm [{f} x {d}] x [{d} x {f}]", f * f * d))
            width = dot_output_width(f, d)
        else:
            width = d + emb_width
            if spec.interaction == "dcn":
                r = spec.dcn_low_rank
                for i in range(spec.dcn_layers):
                    layers.append(_linear(f"cross.{i}.V", width, r, bias=False))
                    layers.append(_linear(f"cross.{i}.U", r, width))
        layers += _mlp("top_mlp", [width, *spec.top_mlp])
    elif fam == "ncf":
        mf = [t.name for n in spec.ncf_mf_tables for t in spec.tables_matching(n)]
        mlp_width = d + sum(t.dim for t in spec.tables if t.name not in mf)
        layers += _mlp("top_mlp", [mlp_width, *spec.top_mlp])
        layers.append(_linear("final", spec.table(mf[0]).dim + spec.top_mlp[-1], 1))
    elif fam == "wnd":
        layers.append(_linear("wide", spec.dense_features, 1))
        layers += _mlp("top_mlp", [d + emb_width, *spec.top_mlp])
    elif fam == "mtwnd":
        layers += _mlp("trunk", [d + emb_width, *spec.top_mlp])
        for k in range(spec.num_tasks):
            layers += _mlp(f"tower{k}", [spec.top_mlp[-1], *spec.task_tower, 1])
    elif fam in ("din", "dien"):
        beh, _cand, others = behaviour_layout(spec)
        steps, bd = len(beh), spec.tables[beh[0]].dim
        other_width = sum(spec.tables[i].dim for i in others)
        if fam == "din":
            layers += _mlp("attention", [4 * bd, *spec.attention_mlp, 1], times=steps)
            layers.append(_op("attention.pool", f"bmm [1 x {steps}] x [{steps} x {bd}]", steps * bd))
            layers += _mlp("top_mlp", [d + other_width + bd, *spec.top_mlp])
        else:
            h = spec.gru_hidden
            layers += _gru("extractor_gru", steps, bd, h)
            layers.append(_linear("attention.proj", bd, h, bias=False))
            layers.append(_op("attention.scores", f"bmm [{steps} x {h}] x [{h} x 1]", steps * h))
            layers += _gru("evolution_augru", steps, h, h)
            layers += _mlp("top_mlp", [d + other_width + h, *spec.top_mlp])
    return layers


def describe(spec: ModelSpec) -> dict[str, Any]:
    """Parameter counts, memory and per-sample compute of `spec` (definitions in the module doc)."""
    layers = dense_layers(spec)
    dense_params = sum(layer["params"] for layer in layers)
    macs = sum(layer["macs"] for layer in layers)
    emb_params = spec.embedding_params
    return {
        "name": spec.name,
        "family": spec.family,
        "interaction": spec.interaction,
        "num_tables": spec.num_tables,
        "params": emb_params + dense_params,
        "embedding_params": emb_params,
        "dense_params": dense_params,
        "embedding_rows": spec.embedding_rows,
        "embedding_bytes": spec.embedding_bytes,
        "dense_macs_per_sample": macs,
        "dense_flops_per_sample": 2 * macs,
        "embedding_lookups_per_sample": spec.lookups_per_sample,
        "embedding_bytes_per_sample": spec.embedding_read_bytes_per_sample,
        "layers": layers,
    }
