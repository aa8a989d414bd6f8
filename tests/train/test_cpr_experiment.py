"""`recstack cpr-experiment`: every policy, same failures, one row per run, table, JSON and plot."""

from __future__ import annotations

import json


def test_cpr_experiment_cli_small(run_cli, tmp_path):
    out = tmp_path / "exp"
    r = run_cli("cpr-experiment", "dlrm-demo", "--out", out, "--seeds", "2", "--samples", "6000", "--scale", "0.001",
                "--steps", "60", "--batch-size", "64", "--mtbf", "14400", "--job-hours", "48", "--pls-sweep", "0.1",
                "--no-progress")
    assert r.code == 0, r.err
    rows = json.loads((out / "results.json").read_text())
    keys = {"policy", "seed", "auc", "logloss", "pls", "overhead_fraction", "bytes_written"}
    assert all(keys <= set(row) for row in rows)
    # 2 seeds x (none, full, cpr, cpr-mfu, cpr-ssu at PLS 0.02, and the three CPR policies at 0.1)
    assert len(rows) == 16 and {row["seed"] for row in rows} == {0, 1}
    by = {(row["policy"], row["seed"], row["target_pls"]): row for row in rows}
    for seed in (0, 1):
        none, full = by[("none", seed, None)], by[("full", seed, None)]
        assert full["auc"] == none["auc"] and full["overhead_fraction"] > by[("cpr", seed, 0.02)]["overhead_fraction"]
        assert none["bytes_written"] == 0 and full["bytes_written"] > 0 and full["failures"] > 0
        # a larger PLS budget saves less often: fewer bytes, more lost updates
        assert by[("cpr", seed, 0.1)]["bytes_written"] < by[("cpr", seed, 0.02)]["bytes_written"]
        assert by[("cpr", seed, 0.1)]["pls"] > by[("cpr", seed, 0.02)]["pls"]
    summary = json.loads((out / "summary.json").read_text())
    assert {s["policy"] for s in summary} == {"none", "full", "cpr", "cpr-mfu", "cpr-ssu"}
    assert (out / "cpr_experiment.png").stat().st_size > 10_000
    assert "overhead" in r.out and "cpr-mfu" in r.out


def test_cpr_experiment_bad_options(run_cli, tmp_path):
    r = run_cli("cpr-experiment", "dlrm-demo", "--out", tmp_path / "x", "--policies", "full,half", "--samples", "3000",
                "--scale", "0.001", "--steps", "5")
    assert r.code == 2 and "half" in r.err
    r = run_cli("cpr-experiment", "dlrm-demo", "--out", tmp_path / "x", "--pls-sweep", "a,b")
    assert r.code == 2 and "--pls-sweep" in r.err
