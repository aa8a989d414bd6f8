"""Synthetic generator: determinism, Zipf access, pooling, splits, teacher ceiling, TSV round trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from recstack.data._synth_sampling import KeyedPermutation, ZipfSampler, mix32
from recstack.data.store import Store
from recstack.data.synth import CHUNK, SyntheticGenerator, expected_pooling, split_bounds, synthesize
from recstack.errors import ConfigError
from recstack.spec import ModelSpec, list_model_configs, load_model_spec


def _spec(tables: list[dict], dense: int = 4, tasks: int = 1, family: str = "dlrm") -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "tiny", "family": family, "dense_features": dense, "bottom_mlp": [8],
        "top_mlp": [8, tasks], "interaction": "cat", "tables": tables, "num_tasks": tasks,
    })


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    spec = load_model_spec("dlrm-demo", 0.1)
    out = tmp_path_factory.mktemp("synth") / "demo"
    synthesize(spec, out, 30_000, seed=7, config_name="dlrm-demo", scale=0.1)
    return out


def test_same_seed_identical_bytes_different_seed_differs(tmp_path, small_store):
    spec = load_model_spec("dlrm-demo", 0.1)
    synthesize(spec, tmp_path / "a", 30_000, seed=7, config_name="dlrm-demo", scale=0.1)
    synthesize(spec, tmp_path / "b", 30_000, seed=8, config_name="dlrm-demo", scale=0.1)
    a, ref, b = _digest(tmp_path / "a"), _digest(small_store), _digest(tmp_path / "b")
    assert a == ref
    for name in ("ids.i32", "dense.f32", "labels.f32", "teacher.f32"):
        assert a[name] != b[name]


def test_store_shape_splits_and_meta(small_store):
    st = Store(small_store)
    assert st.num_samples == 30_000 and st.num_dense == 13 and not st.ragged
    assert st.splits == {"train": (0, 24_000), "val": (24_000, 27_000), "test": (27_000, 30_000)}
    m = st.meta
    assert m["synthetic"]["config"] == "dlrm-demo" and m["synthetic"]["seed"] == 7
    assert m["synthetic"]["scale"] == 0.1 and "teacher" in m["synthetic"]
    for t, spec_t in zip(st.tables, load_model_spec("dlrm-demo", 0.1).tables):
        assert t.rows == spec_t.rows
        col = st.ids[:, st.table_names.index(t.name)]
        assert col.min() >= 0 and col.max() < t.rows
    # dense: log(x+1) of nonnegative integers, heavy tailed, with zeros
    d = np.asarray(st.dense)
    raw = np.expm1(d.astype(np.float64))
    assert d.min() == 0.0 and np.allclose(raw, np.round(raw), rtol=1e-5, atol=1e-3)
    assert raw.max() > 1000 and 0.05 < (raw == 0).mean() < 0.6


def test_teacher_auc_recorded_and_recomputable(small_store):
    st = Store(small_store)
    m = st.meta
    probs = np.fromfile(small_store / "teacher.f32", np.float32).reshape(st.num_samples, 1)
    y = np.asarray(st.labels)[:, 0]
    assert 0.2 < y.mean() < 0.3 and abs(m["ctr"]["train"] - y[:24_000].mean()) < 1e-6
    for split, (lo, hi) in st.splits.items():
        auc = roc_auc_score(y[lo:hi], probs[lo:hi, 0])
        assert 0.7 < m["teacher_auc"][split] < 0.9
        assert m["teacher_auc"][split] == pytest.approx(auc, abs=2e-4)
        p = np.clip(probs[lo:hi, 0].astype(np.float64), 1e-7, 1 - 1e-7)
        ll = -np.mean(y[lo:hi] * np.log(p) + (1 - y[lo:hi]) * np.log1p(-p))
        assert m["teacher_logloss"][split] == pytest.approx(ll, abs=1e-4)
    # labels are calibrated draws: the mean probability matches the click rate
    assert abs(probs.mean() - y.mean()) < 0.01


def test_zipf_exponent_recovered():
    for s in (0.8, 1.05, 1.3):
        z = ZipfSampler(100_000, s)
        r = z.sample(np.random.default_rng(1), 400_000)
        c = np.bincount(r, minlength=100_000)
        k = np.arange(1, 201)
        slope = np.polyfit(np.log(k), np.log(c[:200]), 1)[0]
        assert slope == pytest.approx(-s, abs=0.06)
        # top-10 mass matches the analytic bounded-Zipf value
        assert c[:10].sum() / r.size == pytest.approx(z.pmf_head(10).sum(), rel=0.02)


def test_zipf_tail_of_huge_table_matches_exact_sum():
    n, s = 5_000_000, 1.05
    z = ZipfSampler(n, s)
    r = z.sample(np.random.default_rng(2), 1_000_000)
    w = np.arange(1, n + 1, dtype=np.float64) ** -s
    assert (r >= 65536).mean() == pytest.approx(w[65536:].sum() / w.sum(), abs=0.002)
    assert r.max() < n and r.min() == 0


def test_generated_ids_follow_zipf_after_permutation():
    spec = _spec([{"name": "a", "rows": 50_000, "dim": 8, "zipf": 1.1}, {"name": "u", "rows": 50, "dim": 8, "zipf": 0}])
    c = SyntheticGenerator(spec, seed=3).chunk(0, CHUNK)
    cnt = np.sort(np.bincount(c.values[0], minlength=50_000))[::-1]
    slope = np.polyfit(np.log(np.arange(1, 101)), np.log(cnt[:100]), 1)[0]
    assert slope == pytest.approx(-1.1, abs=0.1)
    # hot rows are scattered, not rows 0, 1, 2 ...
    hot = np.argsort(np.bincount(c.values[0], minlength=50_000))[::-1][:10]
    assert hot.max() > 1000
    # zipf 0 is uniform
    u = np.bincount(c.values[1], minlength=50)
    assert u.min() > 0.8 * CHUNK / 50 and u.max() < 1.2 * CHUNK / 50


def test_permutation_and_hash_are_bijections():
    for n in (1, 2, 5, 1000, 4099):
        y = KeyedPermutation(n, 11)(np.arange(n))
        assert np.array_equal(np.sort(y), np.arange(n))
    h = mix32(np.arange(1 << 18), 5)
    assert np.unique(h).size == 1 << 18 and (h >= 2**31).mean() > 0.4


def test_pooling_means_and_ragged_layout(tmp_path):
    tables = [
        {"name": "p", "rows": 5000, "dim": 8, "pooling": 6, "pooling_dist": "poisson"},
        {"name": "u", "rows": 300, "dim": 8, "pooling": 4, "pooling_dist": "uniform"},
        {"name": "f", "rows": 1000, "dim": 8, "pooling": 3},
        {"name": "one", "rows": 40, "dim": 8},
    ]
    spec = _spec(tables)
    synthesize(spec, tmp_path / "r", 20_000, seed=1)
    st = Store(tmp_path / "r")
    assert st.ragged
    lengths = np.asarray(st.lengths)
    assert lengths[:, 0].mean() == pytest.approx(6.0, rel=0.03)
    assert lengths[:, 1].mean() == pytest.approx(4.0, rel=0.03)
    assert lengths[:, 1].min() == 1 and lengths[:, 1].max() == 7
    assert (lengths[:, 2] == 3).all() and (lengths[:, 3] == 1).all()
    assert [expected_pooling(t) for t in spec.tables] == [6.0, 4.0, 3.0, 1.0]
    # the ragged store reassembles into the generator's own per-table bags
    b = st.batch(0, 100)
    c = SyntheticGenerator(spec, seed=1).chunk(0, 20_000)  # the store holds chunk 0 (20k samples)
    for t in range(4):
        idx, off = b.sparse.table(t)
        n = int(c.lengths[t, :100].sum())
        assert np.array_equal(idx.numpy(), c.values[t][:n])
        assert np.array_equal(np.diff(off.numpy()), c.lengths[t, :100])
    assert 0.7 < st.meta["teacher_auc"]["test"] < 0.9


def test_small_dcnv2_like_multi_hot_fixed(tmp_path):
    spec = load_model_spec("dlrm-dcnv2", 0.0002)
    synthesize(spec, tmp_path / "d", 5000, seed=0)
    st = Store(tmp_path / "d")
    assert not st.ragged and st.pooling[20] == 100 and st.ids.shape == (5000, sum(st.pooling))


def test_multi_task_labels(tmp_path):
    spec = load_model_spec("mtwnd", 0.001)
    rep = synthesize(spec, tmp_path / "m", 8000, seed=2)
    st = Store(tmp_path / "m")
    assert st.num_labels == 3 and st.labels.shape == (8000, 3)
    assert len(rep.teacher_auc_tasks["train"]) == 3
    y = np.asarray(st.labels)
    assert all(0.2 < y[:, j].mean() < 0.3 for j in range(3))
    # task heads differ: labels are not copies of one another
    assert np.corrcoef(y.T)[0, 1] < 0.9
    assert st.meta["teacher_auc"]["train"] == pytest.approx(np.mean(rep.teacher_auc_tasks["train"]), abs=1e-6)


def test_batches_from_memory_match_chunks():
    spec = load_model_spec("dlrm-demo", 0.01)
    g = SyntheticGenerator(spec, seed=4)
    bs = list(g.batches(batch_size=50_000, num_batches=2))
    c0, c1 = g.chunk(0), g.chunk(1)
    assert bs[0].dense.shape == (50_000, 13) and bs[0].labels.shape == (50_000,)
    assert np.array_equal(bs[1].dense.numpy()[:15_536], c0.dense[50_000:])
    assert np.array_equal(bs[1].dense.numpy()[15_536:], c1.dense[: 50_000 - 15_536])
    idx, _ = bs[1].sparse.table(3)
    assert np.array_equal(idx.numpy()[:15_536], c0.values[3][50_000:])


@pytest.mark.parametrize("name", list_model_configs())
def test_every_shipped_config_synthesises(tmp_path, name):
    spec = load_model_spec(name, 0.0001)
    rep = synthesize(spec, tmp_path / name, 1000, seed=0)
    st = Store(tmp_path / name)
    assert st.num_samples == 1000 and st.num_labels == spec.num_tasks and st.num_dense == spec.dense_features
    assert st.ragged == (not spec.uniform_pooling)
    assert 0.6 < rep.teacher_auc["train"] < 0.95 and 0.15 < rep.ctr["train"] < 0.35


def test_splits_and_errors(tmp_path):
    assert split_bounds(1000) == {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
    assert split_bounds(10, (1, 0, 0)) == {"train": (0, 10), "val": (10, 10), "test": (10, 10)}
    spec = load_model_spec("dlrm-dcnv2", 0.0001)
    with pytest.raises(ConfigError, match="single-hot"):
        synthesize(spec, tmp_path / "x", 10, fmt="tsv")
    with pytest.raises(ConfigError, match="num_tasks"):
        synthesize(load_model_spec("mtwnd", 0.0001), tmp_path / "x", 10, fmt="tsv")
    with pytest.raises(ConfigError, match="samples"):
        synthesize(spec, tmp_path / "x", 0)
    with pytest.raises(ConfigError, match="format"):
        synthesize(spec, tmp_path / "x", 10, fmt="parquet")
    assert not (tmp_path / "x").exists()


def test_cli_synth_and_errors(tmp_path, run_cli):
    r = run_cli("data", "synth", "dlrm-demo", "--scale", "0.01", "--samples", "3000", "--seed", "3",
                "--zipf", "0.5", "--out", tmp_path / "s")
    assert r.code == 0, r.err
    assert "teacher AUC" in r.out
    m = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert m["num_samples"] == 3000 and m["synthetic"]["zipf_override"] == 0.5
    assert set(m["synthetic"]["zipf"].values()) == {0.5}
    r = run_cli("data", "synth", "dlrm-dcnv2", "--format", "tsv", "--out", tmp_path / "t")
    assert r.code == 2 and "single-hot" in r.err
    r = run_cli("data", "synth", "no-such-model", "--out", tmp_path / "t")
    assert r.code == 2 and "no-such-model" in r.err


def test_tsv_round_trip_through_preprocessor(tmp_path):
    criteo = pytest.importorskip("recstack.data.criteo", reason="Criteo preprocessor not installed")
    if not hasattr(criteo, "preprocess_criteo"):
        pytest.skip("recstack.data.criteo has no preprocess_criteo yet")
    spec = load_model_spec("dlrm-demo", 0.05)
    synthesize(spec, tmp_path / "store", 4000, seed=9)
    rep = synthesize(spec, tmp_path / "tsv", 4000, seed=9, fmt="tsv")
    text = (tmp_path / "tsv" / "train.txt").read_text().splitlines()
    assert len(text) == 4000 and len(text[0].split("\t")) == 40
    hashes = np.array([int(h, 16) for h in text[0].split("\t")[14:]])
    assert all(len(h) == 8 for h in text[0].split("\t")[14:])
    assert hashes.max() < 2**32
    meta = json.loads((tmp_path / "tsv" / "synth.json").read_text())
    assert meta["teacher_auc"] == rep.teacher_auc
    criteo.preprocess_criteo([tmp_path / "tsv" / "train.txt"], tmp_path / "pre", split="none", remap="frequency")
    a, b = Store(tmp_path / "store"), Store(tmp_path / "pre")
    assert np.array_equal(np.asarray(a.labels), np.asarray(b.labels))
    assert np.allclose(np.asarray(a.dense), np.asarray(b.dense), atol=1e-6)
    # categorical ids: the preprocessor renumbers, so compare the equality structure per table
    for t in range(26):
        x, y = np.asarray(a.ids[:, t]), np.asarray(b.ids[:, t])
        pairs = np.unique(np.stack([x, y], 1), axis=0)
        assert pairs.shape[0] == np.unique(x).size == np.unique(y).size


def test_tsv_missing_fields(tmp_path):
    spec = load_model_spec("dlrm-demo", 0.05)
    synthesize(spec, tmp_path / "tsv", 2000, seed=1, fmt="tsv", missing_rate=0.2)
    fields = [ln.split("\t") for ln in (tmp_path / "tsv" / "train.txt").read_text().splitlines()]
    dense_empty = np.mean([f == "" for row in fields for f in row[1:14]])
    cat_empty = np.mean([f == "" for row in fields for f in row[14:]])
    assert dense_empty == pytest.approx(0.2, abs=0.02) and cat_empty == pytest.approx(0.2, abs=0.02)
    assert all(row[0] in ("0", "1") for row in fields)
    with pytest.raises(ConfigError, match="tsv only"):
        synthesize(spec, tmp_path / "s", 10, missing_rate=0.1)


def test_batches_ragged_small_batches():
    spec = _spec([
        {"name": "p", "rows": 500, "dim": 8, "pooling": 3, "pooling_dist": "poisson"},
        {"name": "f", "rows": 50, "dim": 8, "pooling": 2},
    ])
    g = SyntheticGenerator(spec, seed=6)
    c = g.chunk(0)
    got = list(g.batches(batch_size=7, num_batches=3))
    b = got[2]
    assert b.batch_size == 7 and b.labels.shape == (7,)
    for t in range(2):
        idx, off = b.sparse.table(t)
        start = int(c.lengths[t, :14].sum())
        assert np.array_equal(np.diff(off.numpy()), c.lengths[t, 14:21])
        assert np.array_equal(idx.numpy(), c.values[t][start : start + int(c.lengths[t, 14:21].sum())])
