"""Table statistics: reuse bins, unique ratios and pooling, on hand-built and synthetic stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recstack.data.stats import (
    BIN_LABELS,
    reuse_bin_index,
    reuse_histograms,
    simulate_reuse_bins,
    table_stats,
)
from recstack.data.store import Store, StoreTable, StoreWriter
from recstack.data.synth import synthesize
from recstack.spec import ModelSpec, TableSpec


def _fixed_store(path, ids: np.ndarray, rows: list[int], pooling: list[int]) -> Store:
    n = ids.shape[0]
    tables = [StoreTable(f"t{i}", r, p) for i, (r, p) in enumerate(zip(rows, pooling))]
    with StoreWriter(path, 1, tables) as w:
        w.append(np.zeros((n, 1), np.float32), np.zeros(n, np.float32), ids=ids)
        w.close()
    return Store(path)


def test_bin_edges():
    c = np.array([1, 2, 3, 4, 5, 8, 9, 16, 17, 32768, 32769, 10**6])
    assert reuse_bin_index(c).tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 5, 15, 16, 16]
    assert len(BIN_LABELS) == 17 and BIN_LABELS[0] == "(0,1]" and BIN_LABELS[2] == "(2,4]"
    assert BIN_LABELS[15] == "(16384,32768]" and BIN_LABELS[16] == "(32768,inf)"


def test_hand_built_indices_exact(tmp_path):
    # table 0, one batch of 8 accesses: row 5 x1, row 7 x2, row 9 x5
    col = np.array([5, 7, 7, 9, 9, 9, 9, 9])
    # table 1 (pooling 2): 16 accesses: row 0 x4, row 1 x10, rows 2 and 3 x1
    pairs = np.array([[0, 0], [0, 0], [1, 1], [1, 1], [1, 1], [1, 1], [2, 1], [1, 3]])
    ids = np.concatenate([col[:, None], pairs], axis=1).astype(np.int32)
    st = _fixed_store(tmp_path / "s", ids, [10, 6], [1, 2])
    s = table_stats(st, batch_size=8, split=None)
    assert s["batches"] == 1 and s["batch_size"] == 8 and s["samples"] == 8
    t0, t1 = s["tables"]
    assert t0["accesses"] == 8 and t0["unique_per_batch"] == 3
    assert t0["unique_ratio"] == pytest.approx(3 / 8) and t0["accesses_per_unique"] == pytest.approx(8 / 3)
    exp0 = np.zeros(17)
    exp0[0], exp0[1], exp0[3] = 1 / 8, 2 / 8, 5 / 8
    assert np.allclose(t0["reuse_bins"], exp0)
    assert np.allclose(t0["unique_row_bins"][:4], [1 / 3, 1 / 3, 0, 1 / 3])
    assert t0["rows_touched"] == 3 and t0["rows_touched_frac"] == pytest.approx(0.3)
    assert t0["pooling"]["mean"] == 1.0 and t0["pooling"]["hist"] == {"1": 1.0}
    vals, cnt = np.unique(pairs.ravel(), return_counts=True)
    assert cnt.tolist() == [4, 10, 1, 1]
    exp1 = np.zeros(17)
    exp1[0], exp1[2], exp1[4] = 2 / 16, 4 / 16, 10 / 16  # counts 1, 1 | 4 | 10
    assert np.allclose(t1["reuse_bins"], exp1)
    assert t1["pooling"]["mean"] == 2.0 and t1["unique_ratio"] == pytest.approx(vals.size / 16)
    # aggregate pools both tables' rows (distinct per table)
    agg = s["aggregate"]
    assert agg["accesses_per_batch"] == 24 and agg["unique_per_batch"] == 3 + vals.size
    assert agg["mean_pooling"] == pytest.approx(1.5)
    assert sum(agg["reuse_bins"]) == pytest.approx(1.0)
    a_hist, u_hist = reuse_histograms(col)
    assert np.allclose(a_hist, exp0) and np.allclose(u_hist[:4], [1 / 3, 1 / 3, 0, 1 / 3])


def test_batches_pool_and_batch_size(tmp_path):
    ids = np.repeat(np.arange(4), 4).astype(np.int32)[:, None]  # 0,0,0,0,1,1,1,1,...
    st = _fixed_store(tmp_path / "s", ids, [4], [1])
    one = table_stats(st, batch_size=16, split=None)["tables"][0]
    assert one["reuse_bins"][2] == pytest.approx(1.0)  # each row 4 times
    four = table_stats(st, batch_size=4, max_samples=16, split=None)
    assert four["batches"] == 4 and four["tables"][0]["reuse_bins"][2] == pytest.approx(1.0)
    two = table_stats(st, batch_size=2, max_samples=16, split=None)["tables"][0]
    assert two["reuse_bins"][1] == pytest.approx(1.0) and two["unique_ratio"] == pytest.approx(0.5)
    # a batch larger than the data is cut to the data
    assert table_stats(st, batch_size=1000, split=None)["batch_size"] == 16


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    spec = ModelSpec.model_validate({
        "name": "s", "dense_features": 2, "bottom_mlp": [4], "top_mlp": [1], "interaction": "cat",
        "tables": [
            {"name": "uniform", "rows": 10_000_000, "dim": 4, "zipf": 0.0},
            {"name": "hot", "rows": 100_000, "dim": 4, "zipf": 1.2},
            {"name": "bag", "rows": 5000, "dim": 4, "pooling": 5, "pooling_dist": "poisson", "zipf": 1.05},
        ],
    })
    out = tmp_path_factory.mktemp("stats") / "s"
    synthesize(spec, out, 20_000, seed=3)
    return out


def test_synthetic_store_stats(synth_store, tmp_path):
    s = table_stats(synth_store, batch_size=4096)
    assert s["split"] == "train" and s["batches"] == 3 and s["samples"] == 3 * 4096
    uni, hot, bag = s["tables"]
    for t in (uni, hot, bag):
        assert sum(t["reuse_bins"]) == pytest.approx(1.0, abs=1e-5)
        assert sum(t["unique_row_bins"]) == pytest.approx(1.0, abs=1e-5)
    # rows >> accesses, uniform: nearly every access is to a row seen once in the batch
    assert uni["reuse_bins"][0] > 0.99 and uni["unique_ratio"] > 0.99
    # skewed table: far fewer unique rows, mass in high-reuse bins
    assert hot["unique_ratio"] < 0.5 and sum(hot["reuse_bins"][5:]) > 0.3
    assert bag["pooling"]["mean"] == pytest.approx(5.0, rel=0.05) and bag["pooling"]["min"] >= 1
    assert bag["pooling"]["p99"] >= 10 and sum(bag["pooling"]["hist"].values()) == pytest.approx(1.0, abs=1e-4)
    assert s["aggregate"]["mean_pooling"] == pytest.approx((1 + 1 + 5) / 3, rel=0.03)
    json.dumps(s)  # JSON-serialisable as is


def test_cli_stats(synth_store, tmp_path, run_cli):
    out = tmp_path / "st.json"
    r = run_cli("data", "stats", synth_store, "--batch-size", "2048", "--max-samples", "4096", "--out", out)
    assert r.code == 0, r.err
    d = json.loads(out.read_text())
    assert d["batches"] == 2 and [t["name"] for t in d["tables"]] == ["uniform", "hot", "bag"]
    assert "published 2021" in r.out
    r = run_cli("data", "stats", tmp_path / "missing")
    assert r.code == 2 and "not found" in r.err
    r = run_cli("data", "stats", synth_store, "--split", "nope")
    assert r.code == 2 and "nope" in r.err


def test_simulated_reuse_bins_match_generated_data(synth_store):
    s = table_stats(synth_store, batch_size=4096)
    spec_hot = TableSpec(name="hot", rows=100_000, dim=4, zipf=1.2)
    sim = np.array(simulate_reuse_bins(spec_hot, batch_size=4096, seed=5))
    got = np.array(s["tables"][1]["reuse_bins"])
    assert sum(sim) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(np.cumsum(sim) - np.cumsum(got)).max() < 0.05
    uni = simulate_reuse_bins(TableSpec(name="u", rows=10**8, dim=4, zipf=0.0), batch_size=65536)
    assert uni[0] > 0.999
