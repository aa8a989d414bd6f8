"""Trace replay fidelity and capture overhead, per shipped model, on this machine's CPU.

What it measures, for each model (default: dlrm-kaggle scaled to 1/1000 of its rows, rmc1,
rmc2), `--rounds` times: `recstack.trace.capture` runs `--warmup` training iterations, times
`--timing` iterations without any observer (the captured iteration time), `--timing` more with
PyTorch's ExecutionTraceObserver alone (the observer's overhead), then captures `--iterations`
iterations under torch.profiler with the observer; `recstack.trace.replay` then rebuilds the last
captured iteration's top-level operators from the trace alone and times `--replays` replayed
iterations (median). Reported per round and as medians over rounds: captured ms, replayed ms,
replayed/captured, coverage (share of the iteration's top-level operator time, from the Kineto
trace, that the replay re-runs), operators not rebuilt, and the observer overhead.

    python benchmarks/trace_replay.py
    python benchmarks/trace_replay.py --models rmc1 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recstack.machine import cpu_facts
from recstack.spec import load_config
from recstack.trace import CaptureOptions, capture, load_trace
from recstack.trace.capture import IterationRunner
from recstack.trace.replay import Replayer, replay


def one(model: str, scale: float, batch: int | None, args: argparse.Namespace, tmp: Path, k: int) -> dict:
    spec, ts = load_config(model, scale=scale)
    if batch:
        ts = ts.model_copy(update={"batch_size": batch})
    out = tmp / f"{model}-{k}"
    meta = capture(model, spec, ts, out, CaptureOptions(iterations=args.iterations, timing_iterations=args.timing,
                                                        warmup=args.warmup, save_indices=True, seed=k))
    r = replay(out, iterations=args.replays, warmup=5, per_op=False)
    # interleaved: the model's own iterations and replayed ones in alternating blocks, so both see
    # the same machine state (this host's speed drifts by tens of percent within minutes)
    from recstack.train.dist import DistInfo

    g = load_trace(out)
    runner = IterationRunner(spec, ts, CaptureOptions(warmup=0, timing_iterations=args.replays, iterations=1,
                                                      seed=k), DistInfo(), "cpu")
    rp = Replayer(g, resources=out / "rank0.et_resources")
    runner.timed(5)
    rp.time(5, 0)
    own, rep = [], []
    for _ in range(args.blocks):
        own += runner.timed(5)
        rep += rp.time(5, 0)
    inter = statistics.median(rep) / statistics.median(own)
    it = g.iteration()
    nodes = sum(1 for _ in g.subtree(it.id)) - 1  # what the observer wrote per iteration
    rk = meta["ranks"][0]
    per_node_us = (rk["observer_ms"] - rk["iteration_ms"]) * 1e3 / nodes
    return {"nodes_per_iteration": nodes, "observer_us_per_node": per_node_us,"model": model, "batch_size": ts.batch_size, "captured_ms": r.captured_ms, "replayed_ms": r.replayed_ms,
            "ratio": r.replayed_ms / r.captured_ms, "coverage": r.coverage, "ops": r.ops,
            "own_ms_interleaved": statistics.median(own), "replayed_ms_interleaved": statistics.median(rep),
            "ratio_interleaved": inter,
            "not_rebuilt": [x["name"] for x in r.not_rebuilt], "observer_overhead": meta["observer_overhead"],
            "profiled_overhead": meta["profiled_overhead"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dlrm-kaggle,rmc1,rmc2")
    ap.add_argument("--scale", type=float, default=0.001, help="rows scale for every model")
    ap.add_argument("--batch-size", type=int, default=None, help="default: each config's own")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--timing", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--replays", type=int, default=30)
    ap.add_argument("--blocks", type=int, default=8, help="interleaved blocks of 5 own + 5 replayed iterations")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    facts = cpu_facts()
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"method: capture ({args.warmup} warm-up, {args.timing} timed iterations without observer, {args.timing} "
          f"with the ET observer only, {args.iterations} under profiler + ET), then replay of the last captured "
          f"iteration ({args.replays} timed after 5 warm-up, median); {args.rounds} rounds per model")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for k in range(args.rounds):
                r = one(model, args.scale, args.batch_size, args, Path(tmp), k)
                rows.append(r)
                print(f"  {model} round {k + 1}: captured {r['captured_ms']:.2f} ms, replayed {r['replayed_ms']:.2f} ms "
                      f"(x{r['ratio']:.3f}); interleaved {r['own_ms_interleaved']:.2f} vs {r['replayed_ms_interleaved']:.2f} ms "
                      f"(x{r['ratio_interleaved']:.3f}); coverage {r['coverage']:.1%}, observer overhead "
                      f"{r['observer_overhead']:+.1%} ({r['nodes_per_iteration']} ET nodes/iteration, "
                      f"{r['observer_us_per_node']:.1f} us each)", flush=True)
    summary = {}
    print(f"\n{'model':14s} {'batch':>6s} {'captured ms':>12s} {'replayed ms':>12s} {'ratio':>7s} {'coverage':>9s} "
          f"{'interleaved':>11s} {'ET overhead':>12s} {'nodes/it':>9s} {'us/node':>8s}  not rebuilt")
    for model in args.models.split(","):
        rs = [r for r in rows if r["model"] == model]
        s = {k: statistics.median(r[k] for r in rs) for k in ("captured_ms", "replayed_ms", "ratio", "coverage",
                                                             "observer_overhead", "profiled_overhead",
                                                             "nodes_per_iteration", "observer_us_per_node",
                                                             "ratio_interleaved")}
        s["not_rebuilt"] = sorted({n for r in rs for n in r["not_rebuilt"]})
        summary[model] = s
        print(f"{model:14s} {rs[0]['batch_size']:6d} {s['captured_ms']:12.2f} {s['replayed_ms']:12.2f} "
              f"{s['ratio']:7.3f} {s['coverage']:9.1%} {s['ratio_interleaved']:11.3f} {s['observer_overhead']:+12.1%} {s['nodes_per_iteration']:9.0f} "
              f"{s['observer_us_per_node']:8.1f}  "
              f"{', '.join(s['not_rebuilt']) or '-'}")
    if args.json:
        print(json.dumps({"machine": facts, "rounds": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
