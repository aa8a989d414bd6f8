"""Evaluation metrics for click-through models: exact AUC, log loss, normalised entropy.

NE (He et al., 2014) is the log loss divided by the entropy of the empirical click rate, so
1.0 means "no better than predicting the average CTR" whatever the base rate is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC by the rank-sum (Mann-Whitney) formula; ties count one half.

    NaN when only one class is present (AUC is undefined there).
    """
    y = np.asarray(labels, np.float64).reshape(-1) > 0.5
    s = np.asarray(scores, np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (numerically stable, no clipping needed)."""
    y = torch.as_tensor(np.asarray(labels, np.float64).reshape(-1))
    z = torch.as_tensor(np.asarray(logits, np.float64).reshape(-1))
    if y.numel() == 0:
        return float("nan")
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def entropy(ctr: float) -> float:
    """Binary entropy (nats) of a click rate; 0 for a constant label."""
    if ctr <= 0.0 or ctr >= 1.0:
        return 0.0
    return -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))


def normalized_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Log loss divided by the entropy of the empirical CTR (NaN for a constant label)."""
    y = np.asarray(labels, np.float64).reshape(-1)
    h = entropy(float(y.mean())) if y.size else 0.0
    return logloss(labels, logits) / h if h > 0 else float("nan")


def binary_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """AUC, log loss and NE; for [N, tasks] inputs each is the mean over tasks."""
    y = np.asarray(labels)
    z = np.asarray(logits)
    if y.ndim == 2 and y.shape[1] > 1:
        per = [binary_metrics(y[:, k], z[:, k]) for k in range(y.shape[1])]
        out = {m: float(np.mean([p[m] for p in per])) for m in ("auc", "logloss", "ne")}
        out["auc_per_task"] = [p["auc"] for p in per]  # type: ignore[assignment]
        return out
    y = y.reshape(-1)
    z = z.reshape(-1)
    return {"auc": auc(y, z), "logloss": logloss(y, z), "ne": normalized_entropy(y, z)}
