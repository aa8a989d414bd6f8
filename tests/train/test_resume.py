"""Checkpointed training: a killed and resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from recstack.errors import ConfigError
from recstack.spec import TrainSpec
from recstack.train import CheckpointStore, Trainer, train
from recstack.train.dist import place_tables
from recstack.train.trainer import train_batches

from .helpers import make_store, tiny_spec

STEPS = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = tiny_spec()
    path = make_store(tmp_path_factory.mktemp("resume") / "store", spec, n=3000)
    return spec, path


def _ts(optimizer: str = "adagrad") -> TrainSpec:
    return TrainSpec(optimizer=optimizer, lr=0.05, batch_size=64, steps=STEPS, seed=3, eval_every=25)


def _run(spec, path, out, optimizer="adagrad", **kw):
    return train(spec, _ts(optimizer), path, out, progress=False, **kw)


def _flip_a_byte(f: Path) -> None:
    """Bit rot in the middle of a checkpoint file: its size stays, its checksum does not."""
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))


def test_train_batches_resume_at_any_step(data):
    from recstack.data import Store

    _, path = data
    store = Store(path)
    ts = _ts()
    per_epoch = store.num_batches("train", ts.batch_size, drop_last=True)
    full = [b.labels for b in train_batches(store, ts, 2 * per_epoch + 3, ts.seed)]
    for start in (0, 5, per_epoch, per_epoch + 1, 2 * per_epoch + 2):
        tail = [b.labels for b in train_batches(store, ts, 2 * per_epoch + 3, ts.seed, start)]
        assert len(tail) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(tail, full[start:]))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_resume_from_a_middle_checkpoint_equals_uninterrupted(data, tmp_path, optimizer):
    spec, path = data
    plain = _run(spec, path, tmp_path / "plain", optimizer)
    ck = _run(spec, path, tmp_path / "ck", optimizer, checkpoint_every=20)
    store = CheckpointStore(tmp_path / "ck" / "checkpoints")
    assert [c.step for c in store.checkpoints()] == [20, 40, STEPS]  # the final state is kept too
    assert ck["checkpoints"]["saves"] == 3 and ck["checkpoints"]["bytes"] == sum(c.bytes for c in store.checkpoints())
    assert ck["auc"] == plain["auc"] and ck["logloss"] == plain["logloss"]  # checkpointing changes nothing
    # Lose the two newest checkpoints and the result: a crash right after step 20 was saved.
    for c in store.checkpoints()[-2:]:
        shutil.rmtree(c.path)
    (tmp_path / "ck" / "summary.json").unlink()
    res = _run(spec, path, tmp_path / "ck", optimizer, resume=True, checkpoint_every=20)
    assert res["resumed"]["step"] == 20 and res["resumed"]["checkpoint"] == "step-00000020-full"
    assert res["steps"] == STEPS
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert res["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated rows after resume


def test_a_finished_run_extended_with_more_steps_continues_from_its_end(data, tmp_path):
    spec, path = data
    longer = _ts().model_copy(update={"steps": STEPS + 25})
    plain = train(spec, longer, path, tmp_path / "plain", progress=False)
    first = _run(spec, path, tmp_path / "ck", checkpoint_every=25)  # saves 25, 50 and the final 60
    assert [c.step for c in CheckpointStore(tmp_path / "ck" / "checkpoints").checkpoints()] == [25, 50, STEPS]
    assert first["steps"] == STEPS
    res = train(spec, longer, path, tmp_path / "ck", progress=False, resume=True, checkpoint_every=25)
    assert res["resumed"]["step"] == STEPS  # not 50: nothing is trained twice
    assert res["checkpoints"]["saves"] == 2  # 75 and the final 85
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert res["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)


def test_resume_skips_a_corrupt_checkpoint_and_names_it(data, tmp_path, capsys):
    spec, path = data
    plain = _run(spec, path, tmp_path / "plain")
    _run(spec, path, tmp_path / "ck", checkpoint_every=20)
    newest = CheckpointStore(tmp_path / "ck" / "checkpoints").checkpoints()[-1]
    victim = newest.path / "trainer.pt"
    _flip_a_byte(victim)
    res = _run(spec, path, tmp_path / "ck", resume=True)
    assert res["resumed"]["step"] == 40 and str(victim) in res["resumed"]["skipped"][0]
    assert str(victim) in capsys.readouterr().err
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)


def test_resume_without_checkpoints_starts_over_and_bad_combinations(data, tmp_path):
    spec, path = data
    res = _run(spec, path, tmp_path / "fresh", resume=True)
    assert res["resumed"] == {"step": 0, "checkpoint": None, "skipped": []} and res["steps"] == STEPS
    with pytest.raises(ConfigError, match="checkpoint-every must be >= 1"):
        _run(spec, path, tmp_path / "x", checkpoint_every=0)
    _run(spec, path, tmp_path / "other", checkpoint_every=30)
    ts = _ts().model_copy(update={"seed": 4})
    with pytest.raises(ConfigError, match="seed=3.*seed=4"):
        train(spec, ts, path, tmp_path / "other", progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"step-00000060-full: checkpoint was written with the 'torch' embedding "
                                          r"backend, this run uses 'fused' \(pass --backend torch"):
        _run(spec, path, tmp_path / "other", resume=True, backend="fused")


def test_two_process_run_resumes_from_the_newest_step_every_rank_has(data, tmp_path):
    """Each rank keeps its own store (checkpoints/rankN); a resumed run starts from the newest step
    that is complete and loads on every rank, and ends where an uninterrupted run ends."""
    spec, path = data
    out = tmp_path / "ck"
    plain = _run(spec, path, out, nproc=2, checkpoint_every=20)  # uninterrupted (saving changes nothing)
    stores = [CheckpointStore(out / "checkpoints" / f"rank{r}") for r in range(2)]
    assert [[c.step for c in s.checkpoints()] for s in stores] == [[20, 40, STEPS]] * 2
    assert plain["checkpoints"]["bytes"] == sum(c.bytes for s in stores for c in s.checkpoints())
    for c in stores[1].checkpoints()[-2:]:  # rank 1 lost its two newest: only step 20 is on both
        shutil.rmtree(c.path)
    res = _run(spec, path, out, nproc=2, resume=True, checkpoint_every=20)
    assert res["resumed"]["step"] == 20 and res["steps"] == STEPS
    assert any(f"step {STEPS} is not complete on every rank" in why for why in res["resumed"]["skipped"])
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert res["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    _flip_a_byte(stores[1].checkpoints()[-1].path / "trainer.pt")  # rank 1's newest is corrupt: both take 40
    res = _run(spec, path, out, nproc=2, resume=True)
    assert res["resumed"]["step"] == 40
    assert any("failed to load on another rank" in why for why in res["resumed"]["skipped"])
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert res["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    for n in (1, 3):  # each rank of a 3-process job sees rank stores written by 2
        with pytest.raises(ConfigError, match=r"checkpoints of a run with 2 processes; resume it with --nproc 2"):
            _run(spec, path, out, resume=True, nproc=n)
    _run(spec, path, tmp_path / "one", checkpoint_every=30)
    with pytest.raises(ConfigError, match=r"checkpoints of a run with 1 process; resume it with --nproc 1"):
        _run(spec, path, tmp_path / "one", nproc=2, resume=True)
    swapped = {t.name: 1 - r for t, r in zip(spec.tables, place_tables(spec.tables, 2))}
    with pytest.raises(ConfigError, match=r"rank0/step-00000040-full: checkpoint holds tables \[.*\] on rank 0, "
                                          r"this run places \[.*\] there"):
        _run(spec, path, out, nproc=2, resume=True, plan=swapped)
    shutil.rmtree(stores[1].root)  # as a node-local disk holds only rank 0's store: still told by what it records
    with pytest.raises(ConfigError, match=r"checkpoints of a run with 2 processes; resume it with --nproc 2"):
        _run(spec, path, out, resume=True)


def test_checkpoint_of_another_backend_is_a_one_line_error(data):
    spec, _ = data
    torch_state = Trainer(spec, _ts(), backend="torch").state_dict()
    fused = Trainer(spec, _ts(), backend="fused")
    with pytest.raises(ConfigError, match=r"'torch' embedding backend, this run uses 'fused' \(pass --backend torch"):
        fused.load_state_dict(torch_state)
    del torch_state["backend"]  # as written before checkpoints recorded it: told from the parameter names
    with pytest.raises(ConfigError, match=r"^checkpoint was written with the 'torch' embedding backend"):
        fused.load_state_dict(torch_state)
    fused_state = Trainer(spec, _ts().model_copy(update={"seed": 8}), backend="fused").state_dict()
    del fused_state["backend"]
    with pytest.raises(ConfigError, match="'fused' embedding backend, this run uses 'torch'"):
        Trainer(spec, _ts(), backend="torch").load_state_dict(fused_state)
    fused.load_state_dict(fused_state)  # same backend: loads
    bad = dict(fused_state, model={k: v for k, v in fused_state["model"].items() if "embeddings" in k})
    with pytest.raises(ConfigError) as e:  # a state dict that does not fit: one line, naming the keys
        fused.load_state_dict(bad)
    assert "\n" not in str(e.value) and "Missing key(s)" in str(e.value)


def test_trainer_state_roundtrip_is_exact(data):
    spec, _ = data
    a = Trainer(spec, _ts())
    b = Trainer(spec, _ts().model_copy(update={"seed": 9}))
    a.step_count = 17
    b.load_state_dict(a.state_dict())
    assert b.step_count == 17
    for (n, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), n


_KILLED_RUN = textwrap.dedent("""
    import sys
    from recstack.spec import TrainSpec
    from recstack.train import train
    from tests.train.helpers import tiny_spec
    spec = tiny_spec(rows=100_000, dim=8)
    ts = TrainSpec(optimizer="adagrad", lr=0.05, batch_size=64, steps=int(sys.argv[3]), seed=3, eval_every=25)
    train(spec, ts, sys.argv[1], sys.argv[2], progress=False, checkpoint_every=int(sys.argv[4]),
          nproc=int(sys.argv[5]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_during_a_checkpoint_write_then_resume_matches_uninterrupted(tmp_path, nproc):
    """A real crash: SIGKILL to the whole job while a checkpoint is being written (its hidden
    temporary directory exists), then --resume: the torn checkpoint is ignored and removed, the run
    continues from the last step complete on every rank and ends exactly where an uninterrupted
    run ends."""
    spec = tiny_spec(rows=100_000, dim=8)  # 15 MB checkpoints: each write takes a while
    path = make_store(tmp_path / "store", spec, n=3000)
    steps = 400
    ts = _ts().model_copy(update={"steps": steps})
    plain = train(spec, ts, path, tmp_path / "plain", progress=False, nproc=nproc)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [sys.executable, "-c", _KILLED_RUN, str(path), str(out), str(steps), "5", str(nproc)]
    p = subprocess.Popen(args, env=env, start_new_session=True)  # its own group: the workers die with it
    root = out / "checkpoints"
    ckdirs = [root] if nproc == 1 else [root / f"rank{r}" for r in range(nproc)]
    torn: list[Path] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if all(d.exists() and list(d.glob("step-*-full")) for d in ckdirs):
                torn = [x for d in ckdirs for x in d.iterdir() if x.name.startswith(".step-")]
                if torn:
                    os.killpg(p.pid, signal.SIGKILL)  # a write is in flight right now
                    break
            time.sleep(0.0005)
    finally:
        if p.poll() is None and not torn:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert torn and p.returncode == -signal.SIGKILL, "could not catch a checkpoint write in flight"
    assert not (out / "summary.json").exists()
    complete = [{c.step for c in CheckpointStore(d).checkpoints()} for d in ckdirs]
    newest = max(set.intersection(*complete))  # the newest step every rank finished writing
    res = train(spec, ts, path, out, progress=False, resume=True, checkpoint_every=5, nproc=nproc)
    assert res["resumed"]["checkpoint"] == f"step-{newest:08d}-full"
    assert res["steps"] == steps
    assert res["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert res["logloss"] == pytest.approx(plain["logloss"], abs=1e-6)
    assert not [x for d in ckdirs for x in d.iterdir() if x.name.startswith(".")]  # torn writes cleaned up
