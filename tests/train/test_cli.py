"""`recstack train` end to end and its user errors (one line, exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

from .helpers import make_store, tiny_spec, tiny_train_spec, write_config

REQUIRED = {"auc", "logloss", "ne", "steps", "samples", "samples_per_s", "seconds", "world_size", "backend",
            "teacher_auc"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    spec = tiny_spec()
    store = make_store(d / "store", spec, n=2000)
    cfg = write_config(d / "tiny.yaml", spec, tiny_train_spec(steps=15))
    return cfg, store, d


def _one_line_error(r, *words):
    assert r.code == 2, (r.out, r.err)
    lines = [x for x in r.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_train_on_store_end_to_end(run_cli, setup, tmp_path):
    cfg, store, _ = setup
    out = tmp_path / "run"
    r = run_cli("train", cfg, "--data", store, "--out", out, "--steps", "12", "--batch-size", "32",
                "--lr", "0.1", "--optimizer", "adagrad", "--seed", "5", "--eval-every", "6")
    assert r.code == 0, r.err
    s = json.loads((out / "summary.json").read_text())
    assert REQUIRED <= set(s)
    assert s["steps"] == 12 and s["samples"] == 12 * 32 and s["optimizer"] == "adagrad" and s["seed"] == 5
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").exists()
    assert "AUC" in r.out and "teacher AUC" in r.out
    assert str(out) in "".join(r.out.split())  # the table may fold a long path over lines


def test_train_synthetic_end_to_end(run_cli, tmp_path):
    pytest.importorskip("recstack.data.synth")
    cfg = write_config(tmp_path / "tiny.yaml", tiny_spec(rows=200), tiny_train_spec(steps=10))
    out = tmp_path / "run"
    r = run_cli("train", cfg, "--synthetic", "--samples", "3000", "--out", out)
    assert r.code == 0, r.err
    s = json.loads((out / "summary.json").read_text())
    assert REQUIRED <= set(s) and s["teacher_auc"] is not None and 0.5 < s["teacher_auc"] < 1
    assert (out / "data" / "meta.json").exists()
    assert s["backend"] == "fused"  # the CLI default: same numbers as per-table bags, faster on CPU
    r = run_cli("train", cfg, "--data", out / "data", "--out", tmp_path / "torch", "--backend", "torch")
    assert r.code == 0, r.err
    t = json.loads((tmp_path / "torch" / "summary.json").read_text())
    assert t["backend"] == "torch" and (t["auc"], t["logloss"]) == (s["auc"], s["logloss"])


def test_mismatched_store_names_the_mismatch(run_cli, setup, tmp_path):
    _, store, _ = setup
    other = write_config(tmp_path / "wide.yaml", tiny_spec(dense=7))
    _one_line_error(run_cli("train", other, "--data", store, "--out", tmp_path / "r"), "dense", "7", "5")
    more = write_config(tmp_path / "more.yaml", tiny_spec(tables=6))
    _one_line_error(run_cli("train", more, "--data", store, "--out", tmp_path / "r"), "tables", "6", "4")
    small = write_config(tmp_path / "small.yaml", tiny_spec(rows=10))
    _one_line_error(run_cli("train", small, "--data", store, "--out", tmp_path / "r"), "rows", "t_0")
    assert not (tmp_path / "r" / "summary.json").exists()


def test_data_option_errors(run_cli, setup, tmp_path):
    cfg, store, _ = setup
    out = tmp_path / "r"
    _one_line_error(run_cli("train", cfg, "--data", tmp_path / "nope", "--out", out), "nope", "not found")
    r = run_cli("train", cfg, "--data", store, "--synthetic", "--out", out)
    _one_line_error(r, "--data", "--synthetic")
    _one_line_error(run_cli("train", cfg, "--out", out), "--data", "--synthetic")
    r = run_cli("train", cfg, "--data", store, "--out", out, "--optimizer", "adam")
    _one_line_error(r, "--optimizer")
    _one_line_error(run_cli("train", cfg, "--data", store, "--out", out, "--batch-size", "0"), "--batch-size")
    _one_line_error(run_cli("train", "no-such-config", "--data", store, "--out", out), "no-such-config")
    _one_line_error(run_cli("train", cfg, "--data", store, "--out", out, "--precision", "fp16"), "--precision", "fp16")


def test_bf16_precision_option(run_cli, setup, tmp_path, monkeypatch):
    cfg, store, _ = setup
    r = run_cli("train", cfg, "--data", store, "--out", tmp_path / "r", "--precision", "bf16")
    assert r.code == 0, r.err
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["precision"] == "bf16" and "bf16 autocast" in r.out
    from recstack import machine

    monkeypatch.setattr(machine, "_cpu", lambda: ("Example CPU", frozenset({"avx2"})))
    r = run_cli("train", cfg, "--data", store, "--out", tmp_path / "r2", "--precision", "bf16", "--steps", "2")
    assert r.code == 0 and "no native bfloat16 arithmetic" in r.err


def test_plan_file_errors(run_cli, setup, tmp_path):
    cfg, store, _ = setup
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"t_0": 0, "ghost": 1}))
    _one_line_error(run_cli("train", cfg, "--data", store, "--out", tmp_path / "r", "--nproc", "2",
                            "--plan", plan), "ghost")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(run_cli, setup, tmp_path):
    cfg, store, _ = setup
    r = run_cli("train", cfg, "--data", store, "--out", tmp_path / "r", "--device", "cuda")
    _one_line_error(r, "CUDA")


def test_demo_command_small(run_cli, tmp_path, monkeypatch):
    """The demo path end to end on a tiny config (the real one takes ~40 s; see the README numbers)."""
    pytest.importorskip("recstack.data.synth")
    import recstack.train.cli as tcli

    cfg = write_config(tmp_path / "tiny.yaml", tiny_spec(rows=100), tiny_train_spec(steps=20))
    monkeypatch.setattr(tcli, "DEMO_CONFIG", str(cfg))
    monkeypatch.setattr(tcli, "DEMO_SAMPLES", 4000)
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, "--no-progress")
    assert r.code == 0, r.err
    s = json.loads((out / "summary.json").read_text())
    assert REQUIRED <= set(s) and (out / "learning_curve.png").exists()
    assert "teacher ceiling" in r.out
