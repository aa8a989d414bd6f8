"""The single-process trainer: learning, determinism, run directory, failure behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recstack.data import Store
from recstack.train import Trainer, train
from recstack.train.rundir import SUMMARY

from .helpers import make_store, tiny_spec, tiny_train_spec, train_losses

REQUIRED = {"auc", "logloss", "ne", "steps", "samples", "samples_per_s", "seconds", "world_size", "backend",
            "teacher_auc"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(make_store(tmp_path_factory.mktemp("data") / "store", tiny_spec(), n=3000))


def test_training_learns_and_writes_run_dir(store, tmp_path):
    spec = tiny_spec()
    ts = tiny_train_spec(steps=120, optimizer="adagrad", lr=0.05, eval_every=40)
    s = train(spec, ts, store, tmp_path / "run", progress=False)
    assert REQUIRED <= set(s)
    assert s["steps"] == 120 and s["samples"] == 120 * 64 and s["world_size"] == 1
    assert s["teacher_auc"] == pytest.approx(store.meta["teacher_auc"])
    assert s["auc"] > 0.7  # the hidden model is learnable; the untrained model is near 0.5
    on_disk = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert on_disk["auc"] == pytest.approx(s["auc"])
    png = (tmp_path / "run" / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [40, 80, 120]
    assert {"step", "loss", "lr", "samples_per_s"} <= set(next(r for r in rows if r["kind"] == "train"))
    assert {"auc", "logloss", "ne"} <= set(next(r for r in rows if r["kind"] == "val"))
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "tiny-dlrm" in cfg and "adagrad" in cfg


def test_same_seed_same_numbers_other_seed_differs(store, tmp_path):
    spec = tiny_spec()
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        s = train(spec, tiny_train_spec(seed=seed), store, tmp_path / name, progress=False, log_every=1)
        runs[name] = (train_losses(tmp_path / name), s["auc"])
    assert runs["a"] == runs["b"]
    assert runs["a"][0] != runs["c"][0]


@pytest.mark.parametrize("backend,optimizer", [("fused", "sgd"), ("fbgemm", "sgd"), ("fbgemm", "adagrad")])
def test_backends_match_torch(store, backend, optimizer):
    from recstack.models import available_backends

    if backend not in available_backends():
        pytest.skip(f"{backend} backend unavailable")
    spec = tiny_spec()
    ts = tiny_train_spec(optimizer=optimizer, lr=0.05)
    batches = list(store.batches("train", 64, shuffle=True, seed=0, drop_last=True))[:10]
    losses = {}
    for b in ("torch", backend):
        tr = Trainer(spec, ts, backend=b)
        losses[b] = torch.stack([tr.step(x) for x in batches]).numpy()
    np.testing.assert_allclose(losses[backend], losses["torch"], rtol=1e-4, atol=1e-6)


def test_step_is_a_full_update(store):
    """Trainer.step on a fixed batch lowers that batch's loss (what a benchmark times)."""
    tr = Trainer(tiny_spec(), tiny_train_spec(lr=0.1))
    batch = store.batch(0, 256)
    first = float(tr.step(batch))
    for _ in range(20):
        last = float(tr.step(batch))
    assert last < first and tr.step_count == 21


def test_failed_run_leaves_no_summary(store, tmp_path, monkeypatch):
    spec = tiny_spec()
    out = tmp_path / "run"
    train(spec, tiny_train_spec(steps=5), store, out, progress=False)
    assert (out / SUMMARY).exists()

    real = Trainer.step

    def failing(self, batch):
        if self.step_count == 3:
            raise RuntimeError("injected failure")
        return real(self, batch)

    monkeypatch.setattr(Trainer, "step", failing)
    with pytest.raises(RuntimeError, match="injected"):
        train(spec, tiny_train_spec(steps=10), store, out, progress=False)
    assert not (out / SUMMARY).exists()  # the earlier run's summary is gone too
    assert not list(out.glob("*.tmp*"))


def test_bf16_precision_autocasts_the_dense_part_only(store, tmp_path):
    """precision: bf16 runs the MLPs and interaction in bfloat16 (autocast) and keeps weights,
    embeddings, their gradients and the loss fp32; it learns as well as fp32 on the same data."""
    spec = tiny_spec()
    seen: dict[str, torch.dtype] = {}
    tr = Trainer(spec, tiny_train_spec(lr=0.1, precision="bf16"))
    def record(name: str):
        def hook(module, inputs, output) -> None:
            seen[name] = (output[0] if isinstance(output, list) else output).dtype
        return hook

    hooks = [tr.model.top.register_forward_hook(record("top")),
             tr.model.embeddings.register_forward_hook(record("emb"))]
    loss = tr.step(store.batch(0, 256))
    for h in hooks:
        h.remove()
    assert seen == {"top": torch.bfloat16, "emb": torch.float32} and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    auc: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for seed in (0, 1, 2):  # a 300-sample test split: one run's AUC moves by +-0.02 with the seed
        for p, runs in auc.items():
            ts = tiny_train_spec(steps=120, optimizer="adagrad", lr=0.05, seed=seed, precision=p)
            s = train(spec, ts, store, tmp_path / f"{p}{seed}", progress=False)
            assert s["precision"] == p
            runs.append(s["auc"])
    assert auc["bf16"] != auc["fp32"]  # really computed in another precision
    assert np.mean(auc["bf16"]) == pytest.approx(np.mean(auc["fp32"]), abs=0.015) and min(auc["bf16"]) > 0.8


def test_precision_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="precision"):
        tiny_train_spec(precision="fp16")
