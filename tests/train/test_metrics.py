"""Metrics against values computed by hand (and sklearn as a second opinion)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstack.train import auc, binary_metrics, entropy, logloss, normalized_entropy


def test_auc_hand_computed():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    # positive/negative pairs: (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4
    assert auc(y, s) == pytest.approx(0.75)


def test_auc_ties_count_half():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.5, 0.5, 0.2, 0.9])
    # pairs: (0.5 vs 0.5 tie: 1/2) (0.5 > 0.2: 1) (0.9 > 0.5: 1) (0.9 > 0.2: 1) -> 3.5 / 4
    assert auc(y, s) == pytest.approx(0.875)


def test_auc_perfect_inverse_and_undefined():
    assert auc([0, 0, 1], [1, 2, 3]) == 1.0
    assert auc([0, 0, 1], [3, 2, 1]) == 0.0
    assert math.isnan(auc([1, 1], [0.2, 0.3]))


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    s = np.round(rng.normal(size=5000) + y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_logloss_and_ne_hand_computed():
    y = np.array([1.0, 0.0, 1.0, 1.0])
    p = np.array([0.8, 0.3, 0.6, 0.9])
    z = np.log(p / (1 - p))
    want = -(math.log(0.8) + math.log(0.7) + math.log(0.6) + math.log(0.9)) / 4
    assert logloss(y, z) == pytest.approx(want, rel=1e-12)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # CTR 3/4
    assert entropy(0.75) == pytest.approx(h)
    assert normalized_entropy(y, z) == pytest.approx(want / h, rel=1e-12)


def test_ne_of_constant_ctr_predictor_is_one():
    y = np.array([1, 0, 0, 0, 1, 0, 0, 0], float)
    z = np.full(8, math.log(0.25 / 0.75))
    assert normalized_entropy(y, z) == pytest.approx(1.0)


def test_multitask_means_over_tasks():
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 1]], float)
    z = np.array([[-1, 2], [1, -2], [-2, 0.5], [3, 1]], float)
    m = binary_metrics(y, z)
    assert m["auc"] == pytest.approx((auc(y[:, 0], z[:, 0]) + auc(y[:, 1], z[:, 1])) / 2)
    assert m["logloss"] == pytest.approx((logloss(y[:, 0], z[:, 0]) + logloss(y[:, 1], z[:, 1])) / 2)
    assert len(m["auc_per_task"]) == 2
