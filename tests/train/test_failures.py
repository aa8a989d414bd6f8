"""Failure emulation and CPR's closed-form overhead model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstack.errors import ConfigError, DataError
from recstack.train.failures import (
    CostModel,
    Failure,
    FailureModel,
    choose_policy,
    cpr_interval,
    expected_overhead,
    expected_pls,
    young_interval,
)


def test_young_and_cpr_intervals_by_hand():
    assert young_interval(60, 8 * 3600) == pytest.approx(math.sqrt(2 * 60 * 28800))  # 1859 s
    assert cpr_interval(0.01, 8, 3600) == pytest.approx(2 * 0.01 * 8 * 3600)  # 576 s
    assert expected_pls(cpr_interval(0.02, 16, 5000), 16, 5000) == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="target_pls"):
        cpr_interval(1.5, 8, 3600)


def test_default_cost_model_reproduces_published_full_recovery_overhead():
    cost = CostModel()
    t = young_interval(cost.save_s, cost.mtbf_s)
    full = expected_overhead("full", t, cost)
    # sqrt(2 * 60 / 28800) + 600 / 28800 = 0.0645 + 0.0208
    assert full == pytest.approx(math.sqrt(2 * 60 / 28800) + 600 / 28800)
    assert 0.082 <= full <= 0.086  # published 8.2-8.5%
    # Young's interval minimises the full-recovery overhead
    assert full < expected_overhead("full", 0.8 * t, cost) and full < expected_overhead("full", 1.25 * t, cost)


def test_partial_recovery_overhead_and_choice():
    cost = CostModel()
    part = expected_overhead("partial", 2 * 0.02 * 8 * cost.mtbf_s, cost, n_emb=8)
    assert part == pytest.approx(60 / (0.32 * 28800) + (300 / 8) / 28800)
    policy, interval, est = choose_policy(0.02, 8, cost)
    assert policy == "partial" and interval == pytest.approx(cpr_interval(0.02, 8, cost.mtbf_s))
    assert est["partial"] < est["full"]
    # A tiny PLS budget forces very frequent saves: partial no longer wins, CPR falls back to full.
    policy, interval, est = choose_policy(1e-5, 1, cost)
    assert policy == "full" and interval == pytest.approx(young_interval(cost.save_s, cost.mtbf_s))
    assert est["partial"] > est["full"]
    with pytest.raises(ConfigError, match="policy"):
        expected_overhead("half", 10, cost)


def test_exponential_failures_are_seeded_and_have_the_mtbf():
    fm = FailureModel(mtbf_s=100.0, seed=5)
    a, b = fm.draw(1e6, 8), fm.draw(1e6, 8)
    assert a == b and a != FailureModel(mtbf_s=100.0, seed=6).draw(1e6, 8)
    times = np.array([f.time_s for f in a])
    assert np.all(np.diff(times) > 0) and times[-1] < 1e6
    assert len(a) == pytest.approx(1e4, rel=0.05)  # horizon / MTBF
    assert np.mean(np.diff(times)) == pytest.approx(100.0, rel=0.05)
    nodes = np.bincount([f.node for f in a], minlength=8)
    assert nodes.min() > 0.8 * len(a) / 8  # failures spread uniformly over the nodes


def test_trace_file_parsing_and_errors(tmp_path):
    p = tmp_path / "fails.txt"
    p.write_text("# time node\n10 3\n\n25.5\n40,1  # comma works too\n")
    fm = FailureModel.from_file(p, seed=1)
    got = fm.draw(30.0, 4)
    assert [f.time_s for f in got] == [10.0, 25.5] and got[0].node == 3 and 0 <= got[1].node < 4
    assert fm.draw(100.0, 4)[2] == Failure(40.0, 1) and fm.draw(100.0, 4) == fm.draw(100.0, 4)
    with pytest.raises(ConfigError, match="node 3, but there are 2"):
        fm.draw(100.0, 2)
    for text, where in (("10\nabc\n", ":2:"), ("5\n3\n", ":2: failure times must not decrease"), ("1 2 3\n", ":1:"),
                        ("-4\n", ":1:"), ("7 -1\n", ":1:")):
        p.write_text(text)
        with pytest.raises(DataError, match=where):
            FailureModel.from_file(p)
    with pytest.raises(DataError, match="not found"):
        FailureModel.from_file(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="exactly one"):
        FailureModel()
