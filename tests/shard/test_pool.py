"""Table pools: the analytic reuse model against exact sums and the generator, the calibrated
synthetic pool against the published 2021 statistics, pools from stats JSON and index dumps,
file errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recstack.data.stats import reuse_histograms
from recstack.errors import ConfigError, DataError
from recstack.shard.indices import bag_sizes, generate_indices
from recstack.shard.pool import (
    _HI,
    _LO,
    TOLERANCE,
    TOLERANCE_SMALL,
    _draw_candidates,
    _pois_between,
    expected_bag_moments,
    expected_reuse,
    fit_bag_params,
    load_pool,
    make_pool,
    pool_from_indices,
    pool_from_stats,
    pooling_for_mean,
    save_pool,
)
from recstack.spec.sharding import ShardTable


def _exact(rows: int, lookups: float, s: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Direct sum over every row: access bins, expected unique rows, unique rows per bin."""
    p = np.arange(1, rows + 1, dtype=np.float64) ** -s
    p /= p.sum()
    lam = lookups * p
    return p @ _pois_between(lam, _LO - 1, _HI - 1), float(-np.expm1(-lam).sum()), _pois_between(lam, _LO, _HI).sum(0)


@pytest.mark.parametrize("rows,lookups,s", [(1000, 1e6, 0.5), (50_000, 1e6, 1.0), (20_000, 3e5, 1.3),
                                            (100, 5e4, 0.0), (20_000, 2e4, 0.8), (5_000, 4e6, 1.1)])
def test_expected_reuse_matches_exact_sum(rows, lookups, s):
    ex = expected_reuse(rows, lookups, s)
    acc, uniq, urow = _exact(rows, lookups, s)
    assert ex["reuse_bins"][0].sum() == pytest.approx(1.0)
    assert np.abs(ex["reuse_bins"][0] - acc).max() < 0.002
    assert ex["unique"][0] == pytest.approx(uniq, rel=1e-3)
    assert np.abs(ex["unique_rows"][0] - urow).max() < 2e-3 * uniq


def test_expected_reuse_matches_the_generator():
    """Mean of 4 sampled batches against the analytic model at the lookups drawn. Bins above 512
    hits are compared as one share: there a few hot rows carry percents of the mass each and flip
    between bins from draw to draw (the expectation is exact, a single draw is not)."""
    batch = 8192
    for t in [ShardTable(name="a", rows=2000, dim=8, pooling=8, zipf=0.4, pooling_cv=0.5),
              ShardTable(name="b", rows=1_000_000, dim=8, pooling=20, zipf=0.75, pooling_cv=1.0),
              ShardTable(name="c", rows=5_000_000, dim=8, pooling=4, zipf=1.3, pooling_cv=1.2)]:
        diff, uniq = [], []
        for seed in range(4):
            ids = generate_indices(t, batch, seed=seed)[0].numpy()
            ex = expected_reuse(t.rows, ids.size, t.zipf)
            d = reuse_histograms(ids)[0] - ex["reuse_bins"][0]
            diff.append(np.append(d[:10], d[10:].sum()))
            uniq.append(np.unique(ids).size / ex["unique"][0])
        assert np.abs(np.mean(diff, axis=0)).max() < 0.01, t.name
        assert np.mean(uniq) == pytest.approx(1.0, abs=0.01), t.name


def test_bag_moments_match_the_generator_and_invert():
    rng = np.random.default_rng(0)
    for mean, cv in [(0.3, 1.0), (2.0, 0.5), (15.0, 1.2), (3.0, 0.0)]:
        b = bag_sizes(ShardTable(name="x", rows=10, dim=4, pooling=mean, pooling_cv=cv), 400_000, rng)
        m, s = expected_bag_moments(mean, cv)
        assert m[0] == pytest.approx(b.mean(), abs=4 * b.std() / 632 + 1e-9)
        assert s[0] == pytest.approx(b.std(), rel=0.02, abs=1e-9)
    p = pooling_for_mean([0.05, 0.4, 7.0], [1.5, 1.0, 0.8])
    assert expected_bag_moments(p, [1.5, 1.0, 0.8])[0] == pytest.approx([0.05, 0.4, 7.0], rel=1e-3)
    assert p[0] > 0.05 and p[2] == pytest.approx(7.0, rel=1e-3)  # rounding eats small bags only
    p, cv = fit_bag_params([0.4, 2.0, 15.0, 3.0], [0.8, 1.0, 10.0, 0.0])
    m, s = expected_bag_moments(p, cv)
    assert m == pytest.approx([0.4, 2.0, 15.0, 3.0], rel=2e-3)
    assert s == pytest.approx([0.8, 1.0, 10.0, 0.0], rel=2e-3)
    assert cv[3] == 0.0


@pytest.fixture(scope="module")
def small_pool():
    return make_pool(64, seed=1, check_tables=3, check_indices=2_000_000)


def _comparable(pool) -> dict:
    d = pool.model_dump()
    d["calibration"].pop("seconds")
    d["calibration"].pop("sampled_check", None)
    return d


def test_candidates_depend_on_the_seed():
    a = _draw_candidates(64, np.random.default_rng([0, 0x9001]))
    b = _draw_candidates(64, np.random.default_rng([0, 0x9001]))
    c = _draw_candidates(64, np.random.default_rng([1, 0x9001]))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["rows"], c["rows"])
    # Latin hypercube: one candidate per 1/64 slice of the log-rows range
    u = (np.log10(a["rows"]) - 2) / 6
    assert sorted(np.floor(np.clip(u, 0, 1 - 1e-9) * 64).astype(int)) == list(range(64))


def test_small_pool_is_well_formed(small_pool, tmp_path):
    names = [t.name for t in small_pool.tables]
    assert len(names) == 64 and len(set(names)) == 64
    for t in small_pool.tables:
        assert len(t.reuse) == 17 and sum(t.reuse) == pytest.approx(1.0, abs=1e-4)
        assert 100 <= t.rows <= 10**8 and 0 <= t.zipf <= 1.6 and t.dim == 16
    cal = small_pool.calibration
    err = cal["error"]
    assert cal["tolerance"] == TOLERANCE_SMALL
    assert err["max_abs_reuse_bin"] <= TOLERANCE_SMALL["reuse_bin_abs"]
    assert err["max_abs_unique_row_bin"] <= TOLERANCE_SMALL["unique_row_bin_abs"]
    assert abs(err["accesses_per_unique_rel"]) <= TOLERANCE_SMALL["accesses_per_unique_rel"]
    assert abs(err["mean_pooling_rel"]) <= TOLERANCE_SMALL["mean_pooling_rel"]
    chk = cal["sampled_check"]
    assert chk["tables"] and chk["indices"] > 0
    assert chk["max_abs_bin_diff"] < 0.02
    assert abs(chk["accesses_per_unique_rel_diff"]) < 0.02
    p = save_pool(small_pool, tmp_path / "pool.json")
    assert load_pool(p) == small_pool


def test_default_pool_meets_the_published_2021_statistics():
    """856 tables (the dataset's count), seed 0: the analytic aggregate at batch 65536."""
    pool = make_pool(856, seed=0, check_tables=0)
    cal = pool.calibration
    ach, tgt, err = cal["achieved"], cal["target"], cal["error"]
    assert tgt["mean_pooling"] == pytest.approx(15.812, abs=1e-3)
    assert tgt["accesses_per_unique"] == pytest.approx(6.906, abs=1e-3)
    # the published 2021 reuse bins (dlrm_datasets locality_stats_2021.txt), written out, not read from the module
    assert tgt["reuse_bins"] == [0.069, 0.044, 0.068, 0.101, 0.121, 0.104, 0.073, 0.058, 0.052, 0.050, 0.049,
                                 0.048, 0.048, 0.043, 0.031, 0.023, 0.019]
    assert cal["tolerance"] == TOLERANCE
    assert np.abs(np.subtract(ach["reuse_bins"], tgt["reuse_bins"])).max() <= TOLERANCE["reuse_bin_abs"]
    assert np.abs(np.subtract(ach["unique_row_bins"], tgt["unique_row_bins"])).max() <= TOLERANCE["unique_row_bin_abs"]
    assert ach["accesses_per_unique"] == pytest.approx(tgt["accesses_per_unique"],
                                                       rel=TOLERANCE["accesses_per_unique_rel"])
    assert ach["mean_pooling"] == pytest.approx(tgt["mean_pooling"], rel=TOLERANCE["mean_pooling_rel"])
    assert err["max_abs_reuse_bin"] == pytest.approx(np.abs(np.subtract(ach["reuse_bins"], tgt["reuse_bins"])).max())
    # the per-table numbers reproduce the saved aggregate
    look = np.array([65536 * expected_bag_moments(t.pooling, t.pooling_cv)[0][0] for t in pool.tables])
    agg = (look[:, None] * np.array([t.reuse for t in pool.tables])).sum(0) / look.sum()
    assert np.abs(agg - ach["reuse_bins"]).max() < 1e-4
    assert look.sum() == pytest.approx(ach["indices_per_batch"], rel=1e-6)
    assert set(cal["assumptions"]) >= {"rows", "pooling", "zipf", "pooling_cv", "dim", "selection"}
    assert cal["marginals"]["rows"]["min"] >= 100


# --- pools from data ---------------------------------------------------------------------------

TRUTH = [ShardTable(name=f"f{i}", rows=r, dim=8, pooling=p, zipf=z, pooling_cv=cv)
         for i, (r, p, z, cv) in enumerate([(1000, 1, 0.5, 0.0), (50_000, 10, 1.0, 0.8), (200_000, 3, 1.2, 1.2),
                                            (5000, 25, 0.2, 0.5), (300, 2, 0.9, 1.0)])]
BATCH = 8192


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A `recstack data stats`-style JSON and an index dump of TRUTH's tables (one batch)."""
    d = tmp_path_factory.mktemp("data")
    tabs, idx, off = [], [], [0]
    for t in TRUTH:
        ids, o = (x.numpy() for x in generate_indices(t, BATCH, seed=3))
        rb, ub = reuse_histograms(ids)
        lengths = np.diff(o)
        u = np.unique(ids).size
        tabs.append({"name": t.name, "rows": t.rows, "accesses": int(ids.size), "accesses_per_batch": float(ids.size),
                     "pooling": {"mean": float(lengths.mean()), "std": float(lengths.std())},
                     "unique_per_batch": float(u), "unique_ratio": u / ids.size, "accesses_per_unique": ids.size / u,
                     "reuse_bins": rb.tolist(), "unique_row_bins": ub.tolist()})
        idx.append(ids)
        off.extend((o[1:] + off[-1]).tolist())
    stats = d / "stats.json"
    stats.write_text(json.dumps({"store": str(d / "no-store"), "split": None, "batch_size": BATCH, "batches": 1,
                                 "tables": tabs}))
    npz = d / "rank0.indices.npz"
    np.savez_compressed(npz, indices=np.concatenate(idx), offsets=np.array(off), num_tables=len(TRUTH),
                        batch_size=BATCH)
    return stats, npz


def _check_recovered(pool, rows_exact: bool):
    for want, got in zip(TRUTH, pool.tables):
        assert got.zipf == pytest.approx(want.zipf, abs=0.05), want.name
        assert got.pooling == pytest.approx(want.pooling, rel=0.05), want.name
        assert got.pooling_cv == pytest.approx(want.pooling_cv, abs=0.05), want.name
        if rows_exact:
            assert got.rows == want.rows
        else:
            assert want.rows * 0.9 <= got.rows <= want.rows
    per = pool.calibration["tables"]
    assert max(p["max_abs_bin_err"] for p in per) < 0.03
    agg = pool.calibration["aggregate"]
    assert agg["max_abs_bin_diff"] < 0.01
    assert agg["pool"]["mean_pooling"] == pytest.approx(agg["data"]["mean_pooling"], rel=1e-3)


def test_pool_from_stats(dumps):
    stats, _ = dumps
    pool = pool_from_stats(stats)
    assert [t.name for t in pool.tables] == [t.name for t in TRUTH]
    _check_recovered(pool, rows_exact=True)
    assert {t.dim for t in pool.tables} == {16}
    assert "dim" in pool.calibration["dim_source"]
    assert pool_from_stats(stats, dim=32).tables[0].dim == 32
    data = json.loads(stats.read_text())
    for i, t in enumerate(data["tables"]):
        t["dim"] = 4 * (i + 1)
    stats2 = stats.with_name("stats_dims.json")
    stats2.write_text(json.dumps(data))
    pool2 = pool_from_stats(stats2, dim=64)
    assert [t.dim for t in pool2.tables] == [4, 8, 12, 16, 20]
    assert pool2.calibration["dim_source"] == "data file"


def test_pool_from_indices(dumps):
    _, npz = dumps
    pool = pool_from_indices(npz, dim=32)
    assert [t.name for t in pool.tables] == [f"t{i}" for i in range(len(TRUTH))]
    assert {t.dim for t in pool.tables} == {32}
    assert pool.calibration["batch_size"] == BATCH
    _check_recovered(pool, rows_exact=False)


def test_data_file_errors_name_the_file_and_field(dumps, tmp_path):
    stats, npz = dumps
    with pytest.raises(DataError, match="missing.json: file not found"):
        pool_from_stats(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"tables": [')
    with pytest.raises(DataError, match=r"bad.json: line 1: invalid JSON"):
        pool_from_stats(bad)
    data = json.loads(stats.read_text())
    del data["tables"][2]["reuse_bins"]
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad.json: tables\[2\]: missing field 'reuse_bins'"):
        pool_from_stats(bad)
    data = json.loads(stats.read_text())
    data["tables"][1]["reuse_bins"] = [0.5, 0.5]
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"tables\[1\].reuse_bins: expected 17 bins, got 2"):
        pool_from_stats(bad)
    z = dict(np.load(npz))
    cut = tmp_path / "cut.npz"
    np.savez(cut, indices=z["indices"], offsets=z["offsets"][:-5], num_tables=z["num_tables"],
             batch_size=z["batch_size"])
    with pytest.raises(DataError, match="cut.npz: offsets has"):
        pool_from_indices(cut)
    np.savez(cut, indices=z["indices"], offsets=z["offsets"])
    with pytest.raises(DataError, match="cut.npz: missing array 'num_tables'"):
        pool_from_indices(cut)
    with pytest.raises(ConfigError, match="--dim must be >= 1"):
        pool_from_indices(npz, dim=0)


def test_load_pool_errors(tmp_path, small_pool):
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_pool(tmp_path / "nope.json")
    data = small_pool.model_dump()
    data["tables"][1]["rows"] = -5
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"p.json: tables.1.rows: Input should be greater than 0"):
        load_pool(p)
    data = small_pool.model_dump()
    data["tables"][0]["reuse"] = [1.0]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"p.json: tables.0: reuse must have 17 bins"):
        load_pool(p)


def test_make_pool_option_errors():
    with pytest.raises(ConfigError, match="--tables must be >= 1"):
        make_pool(0)
    with pytest.raises(ConfigError, match="--dim must be >= 1"):
        make_pool(8, dim=0)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_pool(shard_cli, tmp_path, dumps, small_pool):
    out = tmp_path / "pool.json"
    r = shard_cli("pool", "--out", out, "--tables", "64", "--seed", "1", "--check-tables", "2")
    assert r.code == 0, r.err
    assert "published 2021" in r.out and "max |diff|" in r.out
    pool = load_pool(out)
    assert _comparable(pool) == _comparable(small_pool)  # same seed, same pool (API and CLI)
    assert (tmp_path / "pool.png").stat().st_size > 10_000
    stats, _ = dumps
    r = shard_cli("pool", "--out", tmp_path / "s.json", "--from-stats", stats)
    assert r.code == 0, r.err
    assert load_pool(tmp_path / "s.json").tables[1].name == "f1"
    assert (tmp_path / "s.png").exists()


@pytest.mark.parametrize("args,msg", [
    (["--tables", "0"], "--tables must be >= 1"),
    (["--from-stats", "nowhere.json"], "nowhere.json: file not found"),
    (["--from-stats", "a.json", "--from-indices", "b.npz"], "give one"),
    (["--from-stats", "a.json", "--tables", "5"], "--tables applies to synthetic pools"),
    (["--dtype", "fp64"], "--dtype must be one of"),
])
def test_cli_pool_errors_exit_2(shard_cli, tmp_path, args, msg):
    r = shard_cli("pool", "--out", tmp_path / "p.json", *args)
    assert r.code == 2
    assert msg in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "p.json").exists()


def test_cli_pool_out_must_be_json(shard_cli, tmp_path):
    r = shard_cli("pool", "--out", tmp_path / "p.yaml", "--tables", "4")
    assert r.code == 2 and "ending in .json" in r.err
