"""`recstack carbon bom | fleet | RUN_DIR`: output formats and user errors (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_bom_json_names_components_exactly_as_in_the_bill(run_cli):
    r = run_cli("carbon", "bom", "dellr740", "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    bill = yaml.safe_load((REPO / "src/recstack/sustain/data/act/boms/dellr740.yaml").read_text())
    assert set(d["components"]) == set(bill["silicon"])
    assert d["total_kg"] == pytest.approx(sum(c["kg"] for c in d["components"].values()))
    assert d["components"]["cpu.main0"]["kg"] == pytest.approx(23.143 / 2, rel=1e-3)


def test_bom_table_and_file_path(run_cli, tmp_path):
    r = run_cli("carbon", "bom", "fairphone3")
    assert r.code == 0 and "ics.cmos_image_sensor" in r.out and "total" in r.out
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"name": "mine", "silicon": {"soc": {"area": "1 cm2", "process": "7nm",
                                                                     "fab_ci": "iceland", "n_ics": 1}}}))
    r = run_cli("carbon", "bom", p, "--json")
    assert r.code == 0
    # iceland 7.3 g/kWh x 2.15 kWh/cm2 + gpa97 275 + materials 500, over yield 0.875, plus 150 g packaging
    assert json.loads(r.out)["total_kg"] == pytest.approx(((7.3 * 2.15 + 275 + 500) / 0.875 + 150) / 1000)


@pytest.mark.parametrize("item,needle", [
    ({"area": "1 GB", "process": "7nm"}, "silicon.soc.area"),
    ({"area": "1 cm2", "process": "2nm"}, "unknown process node '2nm'"),
    ({"area": "1 cm2", "process": "7nm", "fab_ci": "gondor"}, "unknown location or energy source 'gondor'"),
    ({"area": "-1 cm2", "process": "7nm"}, "must be non-negative"),
])
def test_bom_user_errors_exit_2_in_one_line(run_cli, tmp_path, item, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"name": "bad", "silicon": {"soc": item}}))
    r = run_cli("carbon", "bom", p)
    assert r.code == 2
    assert needle in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_fleet_cli_writes_json_and_plot(run_cli, tmp_path):
    cfg = REPO / "configs/fleet/a100-cluster.yaml"
    r = run_cli("carbon", "fleet", cfg, "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert json.loads((tmp_path / "fleet.json").read_text())["locations"] == d["locations"]
    assert (tmp_path / "fleet.png").stat().st_size > 10_000
    assert d["locations"][0]["location"] == "iceland" and d["locations"][0]["embodied_exceeds_operational"]
    r = run_cli("carbon", "fleet", cfg, "--location", "india", "--pue", "1.5")
    assert r.code == 0 and "india" in r.out and "equal over one lifetime" in r.out
    assert run_cli("carbon", "fleet", cfg, "--pue", "0.9").code == 2


def test_carbon_on_a_run_without_energy_exits_2(run_cli, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"model": "m"}))
    r = run_cli("carbon", tmp_path)
    assert r.code == 2 and "--energy" in r.err
    r = run_cli("carbon", tmp_path / "nope")
    assert r.code == 2 and "not a run directory" in r.err
