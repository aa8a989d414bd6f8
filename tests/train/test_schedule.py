"""The MLPerf-style schedule, checked against numbers worked out by hand."""

from __future__ import annotations

import pytest

from recstack.spec import TrainSpec
from recstack.train import lr_at


def test_constant_by_default():
    ts = TrainSpec(lr=0.3)
    assert [lr_at(s, ts) for s in (0, 1, 1000)] == [0.3, 0.3, 0.3]


def test_linear_warmup():
    ts = TrainSpec(lr=1.0, warmup_steps=4)
    # (s + 1) / 4 during warm-up, then the full rate
    assert [lr_at(s, ts) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_polynomial_decay_to_end_factor():
    ts = TrainSpec(lr=2.0, warmup_steps=2, decay_start=10, decay_steps=4, decay_power=2.0, end_lr_factor=0.1)
    # end = 0.2; lr(s) = 0.2 + 1.8 * (1 - (s - 10) / 4) ** 2 for 10 <= s <= 14, then 0.2
    want = {0: 1.0, 1: 2.0, 5: 2.0, 9: 2.0, 10: 2.0, 11: 0.2 + 1.8 * 0.5625, 12: 0.2 + 1.8 * 0.25,
            13: 0.2 + 1.8 * 0.0625, 14: 0.2, 100: 0.2}
    for s, v in want.items():
        assert lr_at(s, ts) == pytest.approx(v), s


def test_linear_decay_power_one_to_zero():
    ts = TrainSpec(lr=1.0, decay_start=0, decay_steps=10, decay_power=1.0)
    assert [lr_at(s, ts) for s in (0, 5, 9, 10, 20)] == pytest.approx([1.0, 0.5, 0.1, 0.0, 0.0])
