"""CPR's claim, reproduced: checkpoint overhead of full vs partial recovery, and its accuracy cost.

What it measures: `recstack cpr-experiment` (recstack.train.cpr_experiment.run_experiment) on a
synthetic Criteo-like dataset (the `dlrm-demo` layout: 26 Zipf-accessed tables, 13 dense
features; `--samples` samples, one epoch of its 80% train split), with the production-emulation
cost defaults (cluster MTBF 8 h, full save 60 s, full load 300 s, reschedule 300 s; see
recstack.train.failures.CostModel), `--emb-nodes` emulated embedding nodes, the run standing for
`--job-hours` of production training, over `--seeds` seeds. Every policy meets the same failures
per seed. Printed: per policy the mean and spread over seeds of the overhead fraction, the PLS
incurred and the AUC drop against the failure-free run of the same seed, next to the published
numbers (full recovery 8.2-8.5%, CPR-MFU/SSU 0.53-0.68%, accuracy on par). With `--pls-sweep`
the CPR policies also run at each listed target PLS. Results stay in `--out`.

    python benchmarks/cpr_overhead.py --out runs/cpr-bench
    python benchmarks/cpr_overhead.py --out runs/cpr-sweep --seeds 2 --pls-sweep 0.05,0.1,0.2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from recstack.data.synth import synthesize
from recstack.machine import cpu_facts
from recstack.spec import load_config
from recstack.train.cpr_experiment import run_experiment, summarise

PUBLISHED = {"full": (0.082, 0.085), "cpr-mfu": (0.0053, 0.0068), "cpr-ssu": (0.0053, 0.0068)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="dlrm-demo")
    ap.add_argument("--samples", type=int, default=1_500_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--emb-nodes", type=int, default=16)
    ap.add_argument("--job-hours", type=float, default=240.0)
    ap.add_argument("--target-pls", type=float, default=0.02)
    ap.add_argument("--pls-sweep", default="")
    ap.add_argument("--backend", default="fused")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))

    spec, ts = load_config(args.config)
    ts = ts.model_copy(update={"eval_every": 10**9})
    data = args.out / "data"
    t0 = time.perf_counter()
    if not (data / "meta.json").exists():
        synthesize(spec, data, args.samples, seed=ts.seed, config_name=args.config)
    mach = cpu_facts()
    log(f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['platform']}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; data: {args.config}, {args.samples:,} samples ({time.perf_counter() - t0:.0f} s)")
    log(f"emulation: {args.emb_nodes} embedding nodes, {args.job_hours:g} h of production training, MTBF 8 h, "
        f"save 60 s, load 300 s, reschedule 300 s; target PLS {args.target_pls}; {args.seeds} seeds")
    sweep = tuple(float(x) for x in args.pls_sweep.split(",") if x.strip())
    t0 = time.perf_counter()
    rows = run_experiment(spec, ts, data, args.out, seeds=args.seeds, target_pls=args.target_pls, pls_sweep=sweep,
                          recovery={"emb_nodes": args.emb_nodes, "job_hours": args.job_hours}, backend=args.backend,
                          progress=log)
    summ = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summ, indent=1))
    if args.json:
        print(json.dumps(summ, indent=1))
        return 0
    full = next(i for i in summ if i["policy"] == "full")
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s; mean over seeds (min..max)")
    print(f"{'policy':<9} {'PLS target':>10} {'overhead':>22} {'x lower':>8} {'PLS incurred':>13} "
          f"{'AUC drop':>22} {'published overhead':>19}")
    for i in summ:
        pub = PUBLISHED.get(i["policy"])
        ratio = full["overhead_fraction"] / i["overhead_fraction"] if i["overhead_fraction"] else float("inf")
        print(f"{i['policy']:<9} {i['target_pls'] if i['target_pls'] is not None else '-':>10} "
              f"{i['overhead_fraction']:7.2%} ({i['overhead_fraction_min']:.2%}..{i['overhead_fraction_max']:.2%}) "
              f"{ratio:8.1f} {i['pls']:13.4f} "
              f"{i.get('auc_drop', 0):+.4f} ({i.get('auc_drop_min', 0):+.4f}..{i.get('auc_drop_max', 0):+.4f}) "
              f"{(f'{pub[0]:.2%}-{pub[1]:.2%}' if pub else '-'):>19}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
