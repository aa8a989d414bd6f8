"""Checkpoint store: atomic, checksummed, falls back past corrupt or torn checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from recstack.train.checkpoint import BackgroundSaver, CheckpointError, CheckpointStore


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 8, generator=g), "b": torch.randn(8, generator=g), "step": torch.tensor(seed)}


def test_roundtrip_manifest_and_sizes(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    info = store.save(10, {"model": _state(1), "optim": {"lr": 0.1, "state": {0: torch.ones(3)}}}, meta={"seed": 7})
    assert info.path.name == "step-00000010-full" and (info.path / "manifest.json").is_file()
    assert set(info.files) == {"model.pt", "optim.pt"}
    assert info.bytes == sum((info.path / f).stat().st_size for f in info.files) > 64 * 8 * 4
    [again] = store.checkpoints()
    assert again.step == 10 and again.kind == "full" and again.meta == {"seed": 7} and again.files == info.files
    parts = store.load(again)
    for k, v in _state(1).items():
        torch.testing.assert_close(parts["model"][k], v, rtol=0, atol=0)
    assert parts["optim"]["lr"] == 0.1 and torch.equal(parts["optim"]["state"][0], torch.ones(3))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "missing", "truncate", "manifest"])
def test_damaged_checkpoint_is_refused_naming_the_file_and_previous_one_used(tmp_path, damage):
    store = CheckpointStore(tmp_path / "ck")
    store.save(1, {"model": _state(1)})
    bad = store.save(2, {"model": _state(2), "extra": _state(3)})
    victim = bad.path / "extra.pt"
    if damage == "flip":
        _flip_byte(victim, victim.stat().st_size // 2)
    elif damage == "missing":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-10])
    else:
        victim = bad.path / "manifest.json"
        victim.write_text("{not json")
    if damage != "manifest":
        with pytest.raises(CheckpointError, match=str(victim)):
            store.load(bad)
    skipped: list[str] = []
    got = store.load_latest(on_skip=skipped.append)
    assert got is not None
    info, parts = got
    assert info.step == 1
    torch.testing.assert_close(parts["model"]["w"], _state(1)["w"], rtol=0, atol=0)
    assert len(skipped) == 1 and str(victim) in skipped[0] and store.skipped == skipped


def test_nothing_good_returns_none(tmp_path):
    store = CheckpointStore(tmp_path / "nowhere")
    assert store.load_latest() is None and store.checkpoints() == []
    info = store.save(3, {"m": _state(0)})
    (info.path / "m.pt").unlink()
    assert store.load_latest() is None and "m.pt" in store.skipped[0]


_KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from recstack.train.checkpoint import CheckpointStore

    class Slow:  # pickling stalls mid-checkpoint, so the parent can kill the writer there
        def __reduce__(self):
            print("writing", flush=True)
            time.sleep(60)
            return (dict, ())

    store = CheckpointStore(sys.argv[1])
    store.save(1, {"model": {"w": torch.full((1000,), 1.0)}})
    store.save(2, {"model": {"w": torch.full((1000,), 2.0)}, "slow": Slow()})
""")


def test_sigkill_during_write_leaves_no_checkpoint_that_looks_complete(tmp_path):
    root = tmp_path / "ck"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "writing"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    leftovers = [d for d in root.iterdir() if d.name.startswith(".step-00000002-full")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.pt").exists()  # torn write, hidden
    store = CheckpointStore(root)
    assert [c.step for c in store.checkpoints()] == [1]
    info, parts = store.load_latest()
    assert info.step == 1 and float(parts["model"]["w"][0]) == 1.0
    assert store.clean() == leftovers and not leftovers[0].exists()


def test_prune_keeps_newest_full_and_the_partials_after_them(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep=2)
    rows = {"t0": {"ids": torch.tensor([3, 5]), "values": torch.ones(2, 4)}}
    for step in (10, 20, 30, 40):
        store.save(step, {"m": _state(step)})
        store.save_rows(step + 5, rows)
    kept = [(c.step, c.kind) for c in store.checkpoints()]
    assert kept == [(30, "full"), (35, "partial"), (40, "full"), (45, "partial")]


def test_partial_rows_roundtrip_and_validation(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    ids = torch.tensor([7, 1, 9])
    vals = torch.arange(12.0).reshape(3, 4)
    acc = torch.tensor([0.5, 0.25, 1.0])
    info = store.save_rows(4, {"t3": {"ids": ids, "values": vals, "accum": acc}}, meta={"node": 1})
    assert info.kind == "partial" and info.parts == ["rows.t3"]
    got = store.load_latest(kind="partial")
    assert got is not None
    r = got[1]["rows.t3"]
    assert torch.equal(r["ids"], ids) and torch.equal(r["values"], vals) and torch.equal(r["accum"], acc)
    with pytest.raises(ValueError, match="needs 'ids' and 'values'"):
        store.save_rows(5, {"t3": {"ids": ids}})
    with pytest.raises(ValueError, match="2 rows for 3 ids"):
        store.save_rows(5, {"t3": {"ids": ids, "values": vals[:2]}})
    with pytest.raises(ValueError, match="part name"):
        store.save(6, {"../escape": {}})


def test_background_saver_snapshots_before_returning(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    saver = BackgroundSaver(store)
    w = torch.zeros(1000, 16)
    saver.submit(1, {"model": {"w": w}})
    w.add_(1.0)  # training goes on and changes the tensor while the write may be in flight
    saver.submit(2, {"model": {"w": w}})
    info = saver.close()
    assert info is not None and info.step == 2
    s1, s2 = (store.load(c)["model"]["w"] for c in store.checkpoints())
    assert float(s1.abs().max()) == 0.0 and float(s2.min()) == 1.0
    assert saver.stats["saves"] == 2 and saver.stats["bytes"] == sum(c.bytes for c in store.checkpoints())
    assert saver.stats["write_s"] > 0 and saver.stats["snapshot_s"] > 0


def test_background_saver_reraises_write_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    saver = BackgroundSaver(CheckpointStore(blocker / "ck"))
    saver.submit(1, {"m": {"w": torch.ones(2)}})
    with pytest.raises(OSError):
        saver.wait()
    assert saver.wait() is None  # the error is reported once

