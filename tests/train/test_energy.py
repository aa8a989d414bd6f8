"""`recstack train --energy`: the meter's report in summary.json and in the printed table."""

from __future__ import annotations

import json
import re

import pytest

from recstack.sustain.meters import Rapl, Unusable

from .helpers import make_store, tiny_spec, tiny_train_spec, write_config


def rapl_usable() -> bool:
    try:
        Rapl("/sys/class/powercap")
    except Unusable:
        return False
    return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    spec = tiny_spec()
    store = make_store(d / "store", spec, n=2000)
    cfg = write_config(d / "tiny.yaml", spec, tiny_train_spec(steps=10))
    return cfg, store


def test_train_energy_in_summary_and_table(run_cli, setup, tmp_path):
    cfg, store = setup
    out = tmp_path / "run"
    r = run_cli("train", cfg, "--data", store, "--out", out, "--energy", "--energy-hardware", "cpu-2core",
                "--no-progress")
    assert r.code == 0, r.err
    s = json.loads((out / "summary.json").read_text())
    en = s["energy"]
    method = "measured" if rapl_usable() else "estimated"  # --device cpu: no GPU component
    assert en["method"] == method and en["components"]["cpu"]["method"] == method
    assert en["hardware"] == "cpu-2core" and en["total_j"] > 0 and en["seconds"] > 0
    assert en["per_sample_j"] == pytest.approx(en["total_j"] / s["samples"])
    assert en["total_kwh"] == pytest.approx(en["total_j"] / 3.6e6)
    if method == "estimated":
        assert "estimate:" in en["components"]["cpu"]["source"] and any("RAPL" in n for n in en["notes"])
    line = next(x for x in r.out.splitlines() if x.strip().startswith("energy"))
    assert re.search(rf"[0-9.,]+ J \({method}: cpu [0-9.,]+ J\)", line), line
    cfg_yaml = (out / "config.yaml").read_text()
    assert "energy: true" in cfg_yaml


def test_train_without_energy_has_no_energy(run_cli, setup, tmp_path):
    cfg, store = setup
    r = run_cli("train", cfg, "--data", store, "--out", tmp_path / "run", "--steps", "2", "--no-progress")
    assert r.code == 0, r.err
    assert "energy" not in json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not any(x.strip().startswith("energy") for x in r.out.splitlines())


def test_energy_option_errors(run_cli, setup, tmp_path):
    cfg, store = setup
    out = tmp_path / "r"
    r = run_cli("train", cfg, "--data", store, "--out", out, "--energy", "--energy-hardware", "tpu-v9")
    assert r.code == 2 and "tpu-v9" in r.err and "cpu-2core" in r.err and len(r.err.strip().splitlines()) == 1
    r = run_cli("train", cfg, "--data", store, "--out", out, "--energy-hardware", "cpu-2core")
    assert r.code == 2 and "--energy-hardware" in r.err and "--energy" in r.err
    assert not (out / "summary.json").exists()


def test_carbon_report_of_a_metered_run(run_cli, setup, tmp_path):
    """train --energy, then `recstack carbon RUN_DIR`: the report's numbers follow from the summary."""
    cfg, store = setup
    out = tmp_path / "run"
    assert run_cli("train", cfg, "--data", store, "--out", out, "--energy", "--no-progress").code == 0
    r = run_cli("carbon", out, "--location", "usa", "--pue", "1.25", "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    s = json.loads((out / "summary.json").read_text())
    assert rep["energy_method"] == s["energy"]["method"] in ("measured", "estimated")
    assert rep["energy_kwh"] == pytest.approx(s["energy"]["total_kwh"])
    assert rep["operational_kg"] == pytest.approx(s["energy"]["total_kwh"] * 1.25 * 369 / 1000)
    assert rep["embodied_kg"] > 0 and rep["total_kg"] == pytest.approx(rep["operational_kg"] + rep["embodied_kg"])
    assert rep["per_sample_g"] == pytest.approx(rep["total_kg"] * 1000 / s["samples"])
    assert json.loads((out / "carbon.json").read_text()) == rep
    table = run_cli("carbon", out)
    assert table.code == 0 and "embodied (amortised)" in table.out and s["energy"]["method"] in table.out
