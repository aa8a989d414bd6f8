"""Models: every shipped config builds and trains a step; backends agree; init is shard-independent;
`describe` equals hand-computed numbers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from recstack.data.batch import SparseBatch
from recstack.errors import ConfigError
from recstack.models import BACKENDS, EmbeddingBagCollection, build_model, describe
from recstack.models.dlrm import top_input_width
from recstack.models.init import init_table
from recstack.spec import ModelSpec, TableSpec, list_model_configs, load_model_spec

HAS_FBGEMM = "fbgemm" in BACKENDS


def small(name: str, max_rows: int = 1000) -> ModelSpec:
    spec = load_model_spec(name)
    return spec.scaled(max_rows / max(t.rows for t in spec.tables))


def random_batch(spec_tables: list[TableSpec], b: int, seed: int = 0, variable: bool = False) -> SparseBatch:
    """Ids per (table, sample); with `variable`, bag lengths 0..2*pooling (empty bags included)."""
    g = torch.Generator().manual_seed(seed)
    idx, lens = [], []
    for t in spec_tables:
        p = max(1, round(t.pooling))
        n = torch.randint(0, 2 * p + 1, (b,), generator=g) if variable else torch.full((b,), p)
        lens.append(n)
        idx.append(torch.randint(0, t.rows, (int(n.sum()),), generator=g))
    return SparseBatch.from_lengths(torch.cat(idx), torch.cat(lens), len(spec_tables))


def dense_input(spec: ModelSpec, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, spec.dense_features, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- every shipped config


@pytest.mark.parametrize("name", list_model_configs())
def test_config_builds_and_trains_one_step(name: str) -> None:
    spec = small(name)
    model = build_model(spec, seed=1)
    b = 4
    out = model(dense_input(spec, b), random_batch(spec.tables, b))
    want = (b,) if model.num_outputs == 1 else (b, spec.num_tasks)
    assert out.shape == want
    assert model.num_outputs == (spec.num_tasks if spec.family == "mtwnd" else 1)
    labels = torch.randint(0, 2, want, generator=torch.Generator().manual_seed(2)).float()
    F.binary_cross_entropy_with_logits(out, labels).backward()
    dense = model.dense_parameters()
    sparse = model.sparse_parameters()
    assert len(sparse) == spec.num_tables and len(dense) > 0
    assert {id(p) for p in dense}.isdisjoint(id(p) for p in sparse)
    n_all = sum(p.numel() for p in model.parameters())
    assert n_all == sum(p.numel() for p in dense) + sum(p.numel() for p in sparse)
    for p in dense:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0
    for p in sparse:
        assert p.grad is not None and p.grad.is_sparse
        assert torch.isfinite(p.grad.coalesce().values()).all()
    # describe() is exact: parameter count of the built model, FLOPs as FlopCounterMode counts them
    d = describe(spec)
    assert d["dense_params"] == sum(p.numel() for p in dense)
    assert d["params"] == n_all
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        pooled = model.embeddings(random_batch(spec.tables, 1))
        counter = FlopCounterMode(display=False)
        with counter:
            model.dense_forward(dense_input(spec, 1), pooled)
    assert counter.get_total_flops() == d["dense_flops_per_sample"]


@pytest.mark.parametrize("name", list_model_configs())
def test_config_trains_under_bf16_autocast(name: str) -> None:
    """precision: bf16 (the trainer's autocast): every model's forward and backward run, the
    gradients reach every parameter in its own fp32 dtype, finite."""
    spec = small(name)
    model = build_model(spec, seed=1)
    b = 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(dense_input(spec, b), random_batch(spec.tables, b)).float()
    labels = torch.randint(0, 2, out.shape, generator=torch.Generator().manual_seed(2)).float()
    F.binary_cross_entropy_with_logits(out, labels).backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert torch.isfinite(g).all()


# ---------------------------------------------------------------- DLRM specifics


def test_dot_interaction_width() -> None:
    for name, width in (("dlrm-kaggle", 367), ("dlrm-mlperf", 479)):
        spec = small(name, 50)
        assert top_input_width(spec) == width
        model = build_model(spec)
        b = 3
        x = model.bottom(dense_input(spec, b))
        pooled = model.embeddings(random_batch(spec.tables, b))
        z = model.interaction(x, pooled)
        assert z.shape == (b, width)
        # the values: x, then the strict lower triangle of the Gram matrix, row-major
        feats = torch.stack([x, *pooled], 1)
        gram = feats @ feats.transpose(1, 2)
        assert torch.allclose(z[:, : x.shape[1]], x)
        assert torch.allclose(z[:, x.shape[1] + 0], gram[:, 1, 0])
        assert torch.allclose(z[:, x.shape[1] + 1], gram[:, 2, 0])
        assert torch.allclose(z[:, x.shape[1] + 2], gram[:, 2, 1])
        assert torch.allclose(z[:, -1], gram[:, 26, 25])


@pytest.mark.parametrize("tiled", [True, False])
def test_dot_interaction_fast_path_is_bit_identical(tiled: bool) -> None:
    """The fused backend's tiled pooled outputs take _DotFromTiled: same values and gradients, bit for bit."""
    from recstack.models.interaction import DotInteraction

    spec = small("dlrm-kaggle", 200)
    model = build_model(spec, backend="fused", seed=1)
    dense, sb = dense_input(spec, 9), random_batch(spec.tables, 9, seed=3)
    results = []
    for fast in (True, False):
        DotInteraction.fast = fast
        try:
            model.zero_grad(set_to_none=True)
            x = model.bottom(dense)
            pooled = model.embeddings(sb)
            if not tiled:
                pooled = [p.clone() for p in pooled]  # separate tensors: the stack path, either way
            z = model.interaction(x, pooled)
            assert (type(z.grad_fn).__name__ == "_DotFromTiledBackward") == (fast and tiled)
            if fast and tiled:  # feature-major output, the layout the top MLP reads in place
                assert z.t().is_contiguous()
            (z * torch.arange(z.shape[1], dtype=z.dtype)).sum().backward()
            used = [*model.bottom.parameters(), *model.embeddings.parameters()]
            grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad.clone() for p in used]
            results.append((z.detach(), grads))
        finally:
            DotInteraction.fast = True
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.equal(a, b)


def test_cross_layer_formula() -> None:
    spec = small("dlrm-dcnv2", 20).model_copy(update={"dcn_layers": 1, "dcn_low_rank": 8})
    model = build_model(spec)
    x0 = torch.randn(2, top_input_width(spec))
    v, u = model.cross.v[0], model.cross.u[0]
    want = x0 * (x0 @ v.weight.T @ u.weight.T + u.bias) + x0
    assert torch.allclose(model.cross(x0), want, atol=1e-5)


# ---------------------------------------------------------------- backends


def mixed_tables() -> list[TableSpec]:
    """Tables of three dims in interleaved order (fused groups them), variable pooling."""
    dims = [8, 16, 8, 4, 16, 8]
    return [TableSpec(name=f"m{i}", rows=20 + 7 * i, dim=d, pooling=2) for i, d in enumerate(dims)]


@pytest.mark.parametrize("backend", [b for b in ("fused", "fbgemm") if b in BACKENDS])
def test_backends_agree_with_torch(backend: str) -> None:
    tables = mixed_tables()
    ref = EmbeddingBagCollection(tables, backend="torch", seed=3)
    other = EmbeddingBagCollection(tables, backend=backend, seed=99)  # different init, then copy
    g = torch.Generator().manual_seed(5)
    for t in range(len(tables)):
        w = torch.randn(tables[t].rows, tables[t].dim, generator=g)
        ref.load_table_weight(t, w)
        other.load_table_weight(t, w)
    sb = random_batch(tables, 7, seed=1, variable=True)
    assert (sb.lengths == 0).any()  # empty bags pool to zeros on every backend
    for a, b, t in zip(ref(sb), other(sb), tables):
        assert a.shape == b.shape == (7, t.dim)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a whole model: forward to 1e-5 with the same (seeded) weights
    spec = small("rmc2", 300)
    outs = [build_model(spec, backend=bk, seed=4)(dense_input(spec, 5), random_batch(spec.tables, 5, 2))
            for bk in ("torch", backend)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variable", [True, False])  # False: one index per bag (the gradient is the pooled one)
def test_fused_sparse_gradient_equals_torch(variable: bool) -> None:
    tables = [t.model_copy(update={"pooling": 2 if variable else 1}) for t in mixed_tables()]
    sb = random_batch(tables, 6, seed=2, variable=variable)
    grads = {}
    for backend in ("torch", "fused"):
        ebc = EmbeddingBagCollection(tables, backend=backend, seed=0)
        pooled = ebc(sb)
        sum((p * (i + 1)).sum() for i, p in enumerate(pooled)).backward()
        for p in ebc.sparse_parameters():
            assert p.grad.is_sparse
        if backend == "torch":
            grads[backend] = [p.grad.to_dense() for p in ebc.sparse_parameters()]
        else:
            dense = [p.grad.to_dense() for p in ebc.sparse_parameters()]
            grads[backend] = []
            for t in range(len(tables)):
                g, start, rows = ebc._impl.place[t]
                grads[backend].append(dense[g][start : start + rows])
    for a, b in zip(grads["torch"], grads["fused"]):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_FBGEMM, reason="fbgemm_gpu not installed")
def test_fbgemm_fused_sgd_updates_in_backward() -> None:
    tables = mixed_tables()
    sb = random_batch(tables, 6, seed=3, variable=True)
    ref = EmbeddingBagCollection(tables, backend="torch", seed=0)
    sum((p * (i + 1)).sum() for i, p in enumerate(ref(sb))).backward()
    fb = EmbeddingBagCollection(tables, backend="fbgemm", seed=0, learning_rate=0.5)
    assert fb.fused_optimizer and not ref.fused_optimizer
    fb.set_learning_rate(0.25)
    assert fb.get_learning_rate() == pytest.approx(0.25)
    sum((p * (i + 1)).sum() for i, p in enumerate(fb(sb))).backward()  # the update happens here
    for t, p in enumerate(ref.sparse_parameters()):
        want = p.detach() - 0.25 * p.grad.to_dense()
        torch.testing.assert_close(fb.table_weight(t).detach(), want, atol=1e-6, rtol=1e-6)
    model = build_model(small("dlrm-kaggle", 50), backend="fbgemm", fbgemm_optimizer="rowwise_adagrad")
    assert model.fused_optimizer and len(model.sparse_parameters()) == 1


def test_kjt_input_equals_sparse_batch() -> None:
    pytest.importorskip("torchrec")
    from torchrec import KeyedJaggedTensor

    spec = small("ncf", 100)
    sb = random_batch(spec.tables, 5, seed=4, variable=True)
    names = [t.name for t in spec.tables]
    for backend in BACKENDS:
        model = build_model(spec, backend=backend)
        dense = dense_input(spec, 5)
        a = model(dense, sb)
        torch.testing.assert_close(model(dense, sb.to_kjt(names)), a)
        # a KJT with its keys in another order is matched by name
        order = [3, 1, 0, 2]
        sub = sb.select_tables(order)
        kjt = KeyedJaggedTensor(keys=[names[i] for i in order], values=sub.indices, lengths=sub.lengths)
        torch.testing.assert_close(model(dense, kjt), a)


# ---------------------------------------------------------------- initialisation


def test_shard_independent_init() -> None:
    spec = small("dlrm-kaggle", 500)
    subset = [3, 7, 20]
    for backend in BACKENDS:
        full = EmbeddingBagCollection(spec.tables, backend=backend, seed=11)
        part = EmbeddingBagCollection([spec.tables[i] for i in subset], backend=backend, seed=11,
                                      table_ids=subset)
        for j, i in enumerate(subset):
            assert torch.equal(part.table_weight(j), full.table_weight(i))
        # a batch over all tables given to the shard is narrowed to its tables
        sb = random_batch(spec.tables, 3, seed=7, variable=True)
        want = full(sb)
        for j, got in enumerate(part(sb)):
            torch.testing.assert_close(got, want[subset[j]])
        # and every backend holds the same weights
        ref = EmbeddingBagCollection(spec.tables, backend="torch", seed=11)
        assert all(torch.equal(ref.table_weight(t), full.table_weight(t)) for t in range(spec.num_tables))
    shard = build_model(spec, seed=11, table_ids=subset)
    whole = build_model(spec, seed=11)
    assert shard.embeddings.num_tables == 3 and torch.equal(shard.embeddings.table_weight(1), full.table_weight(7))
    assert all(torch.equal(a, b) for a, b in zip(shard.dense_parameters(), whole.dense_parameters()))
    other_seed = EmbeddingBagCollection(spec.tables[:1], seed=12)
    assert not torch.equal(other_seed.table_weight(0), full.table_weight(0))
    # filling in place (views of a fused weight) gives the same values as a fresh tensor
    assert torch.equal(init_table(spec.tables[20].rows, 16, 11, 20), full.table_weight(20))
    # reference bounds: U(-sqrt(1/rows), sqrt(1/rows))
    w = full.table_weight(2)
    assert w.abs().max() <= (1 / spec.tables[2].rows) ** 0.5


def test_dense_init_is_seeded_and_independent_of_tables() -> None:
    a = build_model(small("dlrm-kaggle", 100), seed=5)
    b = build_model(small("dlrm-kaggle", 900), seed=5)  # different table sizes, same dense weights
    c = build_model(small("dlrm-kaggle", 100), seed=6)
    pa, pb, pc = a.dense_parameters(), b.dense_parameters(), c.dense_parameters()
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not torch.equal(pa[0], pc[0])
    w = pa[0]  # bottom layer 0 weight, 13 -> 512: std sqrt(2/(525))
    assert w.shape == (512, 13)
    assert abs(w.std().item() - (2 / 525) ** 0.5) < 0.1 * (2 / 525) ** 0.5


# ---------------------------------------------------------------- describe


def test_describe_dlrm_kaggle_by_hand() -> None:
    d = describe(load_model_spec("dlrm-kaggle"))
    rows = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
            27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
    assert d["embedding_rows"] == sum(rows) == 33762577
    assert d["embedding_bytes"] == sum(rows) * 16 * 4
    mlp_macs = 13 * 512 + 512 * 256 + 256 * 64 + 64 * 16 + 367 * 512 + 512 * 256 + 256 * 1
    dot_macs = 27 * 27 * 16  # the full 27x27 Gram matrix of 16-dim vectors
    assert d["dense_flops_per_sample"] == 2 * (mlp_macs + dot_macs) == 972064
    weights = mlp_macs
    biases = 512 + 256 + 64 + 16 + 512 + 256 + 1
    assert d["dense_params"] == weights + biases == 475985
    assert d["params"] == sum(rows) * 16 + weights + biases == 540677217
    assert d["embedding_lookups_per_sample"] == 26
    assert d["embedding_bytes_per_sample"] == 26 * 16 * 4


def test_describe_rmc1_by_hand() -> None:
    d = describe(load_model_spec("rmc1"))
    assert d["embedding_rows"] == 8 * 4_000_000
    assert d["embedding_bytes"] == 8 * 4_000_000 * 32 * 4
    top_in = 32 + 8 * 32  # cat: bottom output + 8 embeddings
    macs = 128 * 64 + 64 * 32 + top_in * 256 + 256 * 64 + 64 * 1
    assert d["dense_flops_per_sample"] == 2 * macs == 200832
    biases = 64 + 32 + 256 + 64 + 1
    assert d["dense_params"] == macs + biases == 100833
    assert d["params"] == 8 * 4_000_000 * 32 + macs + biases
    assert d["embedding_lookups_per_sample"] == 8 * 80
    assert d["embedding_bytes_per_sample"] == 8 * 80 * 32 * 4


def test_describe_is_fast_for_huge_configs() -> None:
    d = describe(load_model_spec("dlrm-mlperf"))  # ~100 GB of tables: never allocated
    assert d["embedding_bytes"] > 100e9
    dot = next(layer for layer in d["layers"] if layer["name"] == "interaction.dot")
    assert dot["shape"].startswith("bmm [27 x 128]") and dot["macs"] == 27 * 27 * 128


# ---------------------------------------------------------------- errors and CLI


def test_user_errors_name_the_field() -> None:
    spec = ModelSpec(name="x", dense_features=4, top_mlp=[8, 1], interaction="cat",
                     tables=[TableSpec(name="a", rows=10, dim=6)])
    if HAS_FBGEMM:
        with pytest.raises(ConfigError, match="multiple of 4"):
            build_model(spec, backend="fbgemm")
    with pytest.raises(ConfigError, match="backend"):
        build_model(spec, backend="nope")
    with pytest.raises(ConfigError, match="top_mlp"):
        build_model(spec.model_copy(update={"top_mlp": [8, 2]}))
    din = ModelSpec(name="d", family="din", dense_features=1, top_mlp=[8, 2], behaviour_tables=["beh"],
                    tables=[TableSpec(name="beh_0", rows=10, dim=4), TableSpec(name="beh_1", rows=10, dim=4),
                            TableSpec(name="ctx", rows=10, dim=8)])
    with pytest.raises(ConfigError, match="candidate"):
        build_model(din)


def test_cli_show_json(run_cli) -> None:
    r = run_cli("models", "show", "dlrm-kaggle", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["params"] == 540677217 and d["dense_flops_per_sample"] == 972064
    assert d["embedding_rows"] == 33762577 and d["embedding_bytes"] == 33762577 * 64
    r = run_cli("models", "show", "rmc1", "--scale", "0.001")
    assert r.code == 0 and "rmc1" in r.out and "top_mlp.0" in r.out and "288 x 256" in r.out
    assert "32,000" in r.out  # rows after scaling
    r = run_cli("models", "list")
    assert r.code == 0 and all(n in r.out for n in list_model_configs())
    r = run_cli("models", "show", "no-such-model")
    assert r.code == 2 and "no-such-model" in r.err


@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_table_location_points_at_the_tables_rows(backend) -> None:
    from recstack.spec import TableSpec

    tables = [TableSpec(name=f"t{i}", rows=r, dim=d) for i, (r, d) in enumerate([(7, 4), (5, 8), (9, 4)])]
    ebc = EmbeddingBagCollection(tables, backend=backend, seed=2)
    params = ebc.sparse_parameters()
    for t, spec in enumerate(tables):
        i, start, rows = ebc.table_location(t)
        assert rows == spec.rows
        torch.testing.assert_close(params[i][start : start + rows], ebc.table_weight(t), rtol=0, atol=0)
    if backend == "fused":  # the two dim-4 tables share one weight
        assert ebc.table_location(0)[0] == ebc.table_location(2)[0] and ebc.table_location(2)[1] == 7
