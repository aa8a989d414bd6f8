"""`recstack cpr-experiment`: the same model, data and failure sequence under every recovery policy.

For each seed, every policy trains from the same initialisation on the same data and meets the
same emulated failures (the failure draw depends on the seed only). Each row of results.json
holds policy, seed, target PLS, final AUC and log loss, AUC drop against the failure-free run of
that seed, PLS incurred and expected, overhead fraction and bytes the checkpoints wrote. With
`pls_sweep`, the CPR policies also run at each listed target PLS (accuracy cost vs PLS).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recstack.data import Store
from recstack.errors import ConfigError
from recstack.io import atomic_write_json, save_figure
from recstack.spec import ModelSpec, TrainSpec
from recstack.train.recovery import POLICIES
from recstack.train.run import train

RESULTS = "results.json"
PLOT = "cpr_experiment.png"
CPR_POLICIES = ("cpr", "cpr-mfu", "cpr-ssu")


def run_experiment(
    spec: ModelSpec, ts: TrainSpec, data: Store | str | Path, out: str | Path, seeds: int = 3,
    policies: tuple[str, ...] = POLICIES, target_pls: float = 0.02, pls_sweep: tuple[float, ...] = (),
    recovery: dict[str, Any] | None = None, backend: str = "torch",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every (seed, policy[, target PLS]) combination; write results.json and the plot."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ConfigError(f"--policies: {', '.join(bad)} not among {', '.join(POLICIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(recovery or {})
    runs: list[tuple[int, str, float]] = []
    for s in range(seeds):
        runs += [(s, p, target_pls) for p in ("none", *[q for q in policies if q != "none"])]
        runs += [(s, p, pls) for pls in pls_sweep for p in CPR_POLICIES if pls != target_pls]
    rows: list[dict[str, Any]] = []
    clean: dict[int, dict[str, Any]] = {}
    for i, (s, policy, pls) in enumerate(runs):
        if progress:
            progress(f"[{i + 1}/{len(runs)}] seed {s}, {policy}" + (f", PLS {pls:g}" if policy in CPR_POLICIES else ""))
        seed = ts.seed + s
        rec = {**base, "policy": policy, "target_pls": pls, "seed": seed}
        summ = train(spec, ts.model_copy(update={"seed": seed}), data, None, progress=False, backend=backend,
                     recovery=rec if policy != "none" else None)
        r = summ.get("recovery") or {}
        row = {
            "policy": policy, "seed": seed, "target_pls": pls if policy in CPR_POLICIES else None,
            "auc": summ["auc"], "logloss": summ["logloss"], "pls": r.get("pls", 0.0),
            "expected_pls": r.get("expected_pls", 0.0), "overhead_fraction": r.get("overhead_fraction", 0.0),
            "bytes_written": r.get("bytes_written", 0), "failures": r.get("failures", 0),
            "mode": r.get("mode", "none"), "interval_steps": r.get("interval_steps"),
            "train_seconds": summ.get("train_seconds"),
        }
        if policy == "none":
            clean[seed] = row
        row["auc_drop"] = clean[seed]["auc"] - row["auc"] if seed in clean else None
        rows.append(row)
        atomic_write_json(out / RESULTS, rows)  # after every run: an interrupted experiment keeps its rows
    plot_experiment(rows, out / PLOT, target_pls)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (policy, target PLS): mean and spread (stdev, min, max) over seeds of the key numbers."""
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["target_pls"]), []).append(r)
    out = []
    for (policy, pls), rs in groups.items():
        item: dict[str, Any] = {"policy": policy, "target_pls": pls, "seeds": len(rs)}
        for key in ("auc", "auc_drop", "logloss", "pls", "overhead_fraction", "bytes_written"):
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            if vals:
                item[key] = statistics.fmean(vals)
                item[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                item[f"{key}_min"], item[f"{key}_max"] = min(vals), max(vals)
        out.append(item)
    return out


def plot_experiment(rows: list[dict[str, Any]], path: Path, main_pls: float) -> None:
    """Left: overhead vs AUC drop per policy (mean and stdev over seeds, each seed paired with its own
    failure-free run). Right: AUC drop vs PLS incurred for the CPR policies (with a PLS sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = summarise(rows)
    sweep = sorted({r["target_pls"] for r in rows if r["target_pls"] is not None})
    fig, axes = plt.subplots(1, 2 if len(sweep) > 1 else 1, figsize=(11 if len(sweep) > 1 else 6, 4), squeeze=False)
    ax = axes[0][0]
    for item in summ:
        if item["policy"] in CPR_POLICIES and item["target_pls"] != main_pls:
            continue
        ax.errorbar(item["overhead_fraction"] * 100, item.get("auc_drop", 0.0), yerr=item.get("auc_drop_std", 0.0),
                    fmt="o", capsize=3, label=item["policy"])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("checkpoint-related overhead (% of training time)")
    ax.set_ylabel("AUC drop vs no failures (same seed)")
    ax.set_title("recovery policies")
    ax.legend(fontsize=8)
    if len(sweep) > 1:
        ax2 = axes[0][1]
        for policy in CPR_POLICIES:
            pts = sorted((i["pls"], i.get("auc_drop", 0.0), i.get("auc_drop_std", 0.0)) for i in summ
                         if i["policy"] == policy and i.get("auc_drop") is not None)
            if pts:
                ax2.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                             capsize=3, label=policy)
        ax2.axhline(0, color="grey", lw=0.8)
        ax2.set_xlabel("PLS incurred (portion of lost embedding updates)")
        ax2.set_ylabel("AUC drop vs no failures")
        ax2.set_title("accuracy cost of partial recovery")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
