"""What full checkpoints cost a training run: background (BackgroundSaver) vs inline writes.

What it measures: wall time of `--steps` training steps (`recstack.train.Trainer.step`, random
pre-generated batches, data loading excluded) of a DLRM with `--tables` x `--rows` x `--dim`
embedding tables, three ways, interleaved `--rounds` times: no checkpoints; a full checkpoint
(model, optimiser state, step) every `--every` steps written by `BackgroundSaver` (training waits
only for the in-memory snapshot); and the same checkpoints written inline (`CheckpointStore.save`
on the training thread). Reported: median run time of each, the overhead of each over no
checkpoints as a fraction, the caller's blocked time per checkpoint, bytes per checkpoint and the
background write rate (torch.save, fsync, SHA-256 and rename included). Checkpoints go to `--dir`
(default: a temporary directory on the same disk as the system temp dir).

    python benchmarks/checkpoint_cost.py
    python benchmarks/checkpoint_cost.py --rows 1000000 --tables 8 --every 40 --steps 120 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import bench_spec, machine, random_batches

from recstack.spec import TrainSpec
from recstack.train import BackgroundSaver, CheckpointStore, Trainer


def run(trainer: Trainer, batches: list, steps: int, every: int, mode: str, root: Path) -> dict[str, float]:
    shutil.rmtree(root, ignore_errors=True)
    store = CheckpointStore(root, keep=2)
    saver = BackgroundSaver(store) if mode == "background" else None
    blocked, saves, nbytes = 0.0, 0, 0
    t0 = time.perf_counter()
    for i in range(steps):
        trainer.step(batches[i % len(batches)])
        if mode != "none" and (i + 1) % every == 0 and i + 1 < steps:  # none at the end, as in fit()
            t = time.perf_counter()
            if saver is not None:
                saver.submit(i + 1, {"trainer": trainer.state_dict()})
            else:
                nbytes += store.save(i + 1, {"trainer": trainer.state_dict()}).bytes
            blocked += time.perf_counter() - t
            saves += 1
    if saver is not None:
        t = time.perf_counter()
        saver.close()
        blocked += time.perf_counter() - t
        nbytes = saver.stats["bytes"]
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "blocked_s": blocked, "saves": saves, "bytes": nbytes}
    if saver is not None:
        out["write_s"] = saver.stats["write_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=100, help="steps between checkpoints")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="checkpoint directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    spec = bench_spec(args.rows, args.tables, args.dim, 1)
    trainer = Trainer(spec, TrainSpec(optimizer="sgd", lr=0.1, batch_size=args.batch_size), backend="fused")
    batches = random_batches(spec, args.batch_size, 8)
    for b in batches[:3]:
        trainer.step(b)
    tmp = Path(tempfile.mkdtemp(prefix="recstack-ckpt-bench-")) if args.dir is None else args.dir
    mach = machine()
    log(f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, {platform.platform()}")
    log(f"model: {args.tables} tables x {args.rows} rows x dim {args.dim}, batch {args.batch_size}; "
        f"{args.steps} steps, a full checkpoint every {args.every} steps; {args.rounds} interleaved rounds")
    res: dict[str, list[dict[str, float]]] = {"none": [], "background": [], "inline": []}
    try:
        for r in range(args.rounds):
            for mode, rows in res.items():
                rows.append(run(trainer, batches, args.steps, args.every, mode, tmp / mode))
                log(f"round {r + 1}: {mode:<10} {rows[-1]['wall_s']:.2f} s")
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(x["wall_s"] for x in res["none"])
    out: dict[str, object] = {"machine": mach, "config": vars(args) | {"dir": str(args.dir) if args.dir else None}}
    for mode in ("background", "inline"):
        wall = statistics.median(x["wall_s"] for x in res[mode])
        saves = res[mode][0]["saves"]
        row = {
            "wall_s": wall, "overhead_fraction": wall / base - 1,
            "blocked_s_per_checkpoint": statistics.median(x["blocked_s"] / max(1, x["saves"]) for x in res[mode]),
            "bytes_per_checkpoint": res[mode][0]["bytes"] / max(1, saves), "checkpoints": saves,
        }
        if mode == "background":
            row["write_mb_per_s"] = statistics.median(x["bytes"] / x["write_s"] / 2**20 for x in res[mode] if x["write_s"])
        out[mode] = row
    out["none"] = {"wall_s": base}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"\nno checkpoints: {base:.2f} s for {args.steps} steps")
    for mode in ("background", "inline"):
        row = out[mode]
        assert isinstance(row, dict)
        extra = f", background write {row['write_mb_per_s']:.0f} MiB/s" if "write_mb_per_s" in row else ""
        print(f"{mode:<10}: {row['wall_s']:.2f} s, overhead {row['overhead_fraction']:+.1%}; "
              f"{row['checkpoints']} checkpoints of {row['bytes_per_checkpoint'] / 2**20:.0f} MiB, "
              f"training blocked {row['blocked_s_per_checkpoint']:.2f} s per checkpoint{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
