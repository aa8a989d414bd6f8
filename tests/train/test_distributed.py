"""Hybrid parallelism: two processes (tables split across ranks) train exactly like one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from recstack.train import train

from .helpers import make_store, tiny_spec, tiny_train_spec, train_losses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("data") / "store", tiny_spec(tables=5), n=3000)


def _compare(data, tmp_path, ts, plan=None, **two_kw):
    spec = tiny_spec(tables=5)
    one = train(spec, ts, data, tmp_path / "one", progress=False, log_every=1)
    two = train(spec, ts, data, tmp_path / "two", progress=False, log_every=1, nproc=2, plan=plan, **two_kw)
    l1, l2 = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(l1) == len(l2) == ts.steps
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["auc"] == pytest.approx(one["auc"], abs=1e-4)
    assert two["logloss"] == pytest.approx(one["logloss"], rel=1e-4)
    return one, two


def test_two_processes_equal_one(data, tmp_path):
    """Default placement splits the 5 tables 3/2; SGD, 20 steps, even batch slices; energy metered."""
    _, two = _compare(data, tmp_path, tiny_train_spec(steps=20, lr=0.2), energy=True)
    assert sorted(set(two["placement"].values())) == [0, 1]
    cpu = two["energy"]["components"]["cpu"]
    written = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert written["energy"]["total_j"] == two["energy"]["total_j"]
    if cpu["method"] == "estimated":  # the parent meters the workers: their CPU time counts once joined
        cpu_s = float(re.search(r"cpu_s ([0-9.]+) s", cpu["source"]).group(1))
        assert cpu_s > 1.0, cpu["source"]  # two interpreters importing torch and training; the parent idles


def test_two_processes_uneven_slices_rank_without_tables(data, tmp_path):
    """Odd batch (slices 32/31), every table on rank 1 (rank 0 holds none), row-wise Adagrad."""
    plan = {f"t_{i}": 1 for i in range(5)}
    _compare(data, tmp_path, tiny_train_spec(steps=12, batch_size=63, optimizer="adagrad", lr=0.05), plan)


def test_torchrun_entry_point(data, tmp_path):
    """`torchrun -m recstack.train.worker` runs the same job (rank 0 writes the run directory)."""
    from .helpers import write_config

    cfg = write_config(tmp_path / "tiny.yaml", tiny_spec(tables=5), tiny_train_spec(steps=6))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "recstack.train.worker", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"),
           "--no-progress"]
    # Own session, so a hang kills torchrun's workers too, not only the launcher.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    assert p.returncode == 0, err[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 6
