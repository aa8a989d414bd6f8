"""The run directory: resolved config, metrics log, summary, learning-curve plot.

summary.json is written last and atomically, and a stale one is removed when a run starts,
so a directory with a summary.json always holds a finished run.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import yaml

from recstack.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl, save_figure
from recstack.spec import ModelSpec, TrainSpec

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOT = "learning_curve.png"


def _clean(v: Any) -> Any:
    """JSON-safe value: NaN/inf become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, spec: ModelSpec, ts: TrainSpec, options: dict[str, Any], resume_step: int | None = None) -> None:
        """Create the directory, drop results of an earlier run, write config.yaml.

        With `resume_step`, the metrics of the earlier run up to that step are kept (later rows
        are dropped: the resumed run logs them again).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        kept = [r for r in self.rows() if int(r.get("step", 0)) <= resume_step] if resume_step is not None else []
        for name in (SUMMARY, METRICS, PLOT):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        if kept:
            atomic_write_text(self.path / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
        doc = {"model": spec.model_dump(), "train": ts.model_dump(), "options": _clean(options)}
        atomic_write_text(self.path / CONFIG, yaml.safe_dump(doc, sort_keys=False))

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path / METRICS, _clean(row))

    def rows(self) -> list[dict[str, Any]]:
        p = self.path / METRICS
        return read_jsonl(p) if p.exists() else []

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY, _clean(summary))


def plot_learning_curve(rows: list[dict[str, Any]], out: Path, teacher_auc: float | None = None,
                        title: str = "") -> Path:
    """Train loss (left axis) and validation AUC (right axis) against step; teacher AUC dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [r for r in rows if r.get("kind") == "train" and r.get("loss") is not None]
    ev = [r for r in rows if r.get("kind") == "val" and r.get("auc") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if tr:
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (BCE)", color="tab:blue")
    ax2 = ax.twinx()
    if ev:
        ax2.plot([r["step"] for r in ev], [r["auc"] for r in ev], "o-", color="tab:orange", label="val AUC")
    if teacher_auc is not None:
        ax2.axhline(teacher_auc, color="tab:green", linestyle="--", label=f"teacher AUC {teacher_auc:.4f}")
    ax2.set_ylabel("AUC", color="tab:orange")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles, [str(h.get_label()) for h in handles], loc="center right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    return out
