"""What compiled, fused CPU kernels would save in the DLRM benchmark step (a probe, not a feature).

Why: the training-step target of issue 2 (1.5x the reference) is short like-for-like, and the
remaining levers are compiled kernels, which recstack does not have (no build step, pure
PyTorch). This script measures the two largest candidates instead of estimating them:

- the dot interaction, forward and backward, as one pass per 16 samples held in AVX-512
  registers (`dot_fwd` / `dot_bwd` in `_native_kernels.cpp`), against recstack's
  `_DotFromTiled` (stack copies + two batched 9x9 GEMMs + index copies);
- the sparse SGD row update with software prefetch, split across threads by row range (exact:
  each row's updates keep their order), against `SparseSGD.step` (torch scatter_add_).

What it measures, on the configuration of `train_throughput.py` (bottom 13-512-256-64-16, top
512-256-1, 8 tables x 1M rows, dim 16, one index per bag, batch 2048, SGD, fp32):
1. correctness: largest difference of the native interaction's output and gradients from
   recstack's, and whether the native row update is bit-identical to recstack's;
2. isolated time of each part, current vs native, in `--blocks` interleaved blocks (the row
   update after a 64 MB buffer pass each call, as its rows are cold in the step; the pass is
   timed alone and subtracted);
3. the whole `Trainer.step`, current vs native (both patched in), in `--blocks` alternating
   blocks of `--iters` steps: median ms of each and the median of the pairwise ratios.

The kernels are compiled on first use with torch.utils.cpp_extension (a C++ compiler and
AVX-512 are required; about 40 s) into a temporary directory that is removed afterwards.

    python benchmarks/native_kernels_probe.py
    python benchmarks/native_kernels_probe.py --blocks 40 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
from train_throughput import bench_spec, machine, random_batches

from recstack.models import interaction as inter
from recstack.spec import TrainSpec
from recstack.train import Trainer, optim


def build(tmp: str) -> Any:
    from torch.utils.cpp_extension import load

    return load(name="recstack_native_probe", sources=[str(_HERE / "_native_kernels.cpp")],
                extra_cflags=["-O3", "-march=native", "-ffp-contract=off"], build_directory=tmp, verbose=False)


def interleaved_us(fns: dict[str, Callable[[], object]], blocks: int, n: int) -> dict[str, float]:
    """Median us per call of each function over `blocks` rounds of n calls, the functions alternating."""
    for f in fns.values():
        f()
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(n):
                f()
            res[k].append((time.perf_counter() - t) / n * 1e6)
    return {k: statistics.median(v) for k, v in res.items()}


class NativePatch:
    """Routes the step's interaction and sparse SGD to the native kernels while `on` is set."""

    def __init__(self, kern: Any) -> None:
        self.on = False
        self._apply = inter._DotFromTiled.apply  # inherited from autograd.Function
        self._step = optim.SparseSGD.step
        probe = self

        class _Native(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, tiled, flat_idx, flat_idx_t):  # type: ignore[override]
                ctx.save_for_backward(x.t(), tiled)
                return kern.dot_fwd(x.t(), tiled).t()

            @staticmethod
            @torch.autograd.function.once_differentiable
            def backward(ctx, g):  # type: ignore[override]
                xt, tiled = ctx.saved_tensors
                gx, gtiled = kern.dot_bwd(g.t(), xt, tiled)
                return gx.t(), gtiled, None, None

        def apply(x, tiled, flat_idx, flat_idx_t):
            if probe.on and x.t().stride(1) == 1:
                return _Native.apply(x, tiled, flat_idx, flat_idx_t)
            return probe._apply(x, tiled, flat_idx, flat_idx_t)

        @torch.no_grad()
        def step(sgd: optim.SparseSGD, lr: float) -> None:
            if not probe.on:
                return probe._step(sgd, lr)
            for p in sgd.params:
                if p.grad is not None:
                    g = p.grad
                    kern.sparse_sgd_rows(p, g._indices()[0].contiguous(), g._values().contiguous(), -lr)
            return None

        inter._DotFromTiled.apply = apply
        optim.SparseSGD.step = step

    def restore(self) -> None:
        del inter._DotFromTiled.apply  # back to the inherited classmethod
        optim.SparseSGD.step = self._step


def check_and_time_parts(kern: Any, blocks: int) -> dict[str, Any]:
    g0 = torch.Generator().manual_seed(0)
    b, t, d = 2048, 8, 16
    xt = torch.randn(d, b, generator=g0)
    tiled = torch.randn(t * b, d, generator=g0)
    dot = inter.DotInteraction(t + 1)
    x = xt.t().requires_grad_()
    tl = tiled.clone().requires_grad_()
    ref = inter._DotFromTiled.apply(x, tl, dot.flat_idx, dot.flat_idx_t)
    gt = torch.randn(ref.shape[1], b, generator=g0)
    ref.backward(gt.t())
    z = kern.dot_fwd(xt, tiled)
    gx, gtiled = kern.dot_bwd(gt, xt, tiled)
    out: dict[str, Any] = {"correctness": {
        "interaction_fwd_max_abs_diff": (z.t() - ref.detach()).abs().max().item(),
        "interaction_fwd_max_abs": ref.detach().abs().max().item(),
        "interaction_bwd_x_max_abs_diff": (gx.t() - x.grad).abs().max().item(),
        "interaction_bwd_tables_max_abs_diff": (gtiled - tl.grad).abs().max().item(),
    }}
    rows = 8_000_000
    w1 = torch.randn(rows, d, generator=g0)
    w2 = w1.clone()
    idx = torch.randint(0, rows, (b * t,), generator=g0)
    idx[:64] = idx[64:128]  # repeated rows must accumulate in order
    vals = torch.randn(b * t, d, generator=g0)
    p1, p2 = torch.nn.Parameter(w1), torch.nn.Parameter(w2)
    for p in (p1, p2):
        p.grad = torch.sparse_coo_tensor(idx[None], vals, (rows, d), check_invariants=False)
    optim.SparseSGD([p1]).step(0.1)
    kern.sparse_sgd_rows(p2.data, idx, vals, -0.1)
    out["correctness"]["sparse_sgd_bit_identical"] = bool(torch.equal(p1.data, p2.data))

    class _Ctx:
        def save_for_backward(self, *a: torch.Tensor) -> None:
            self.saved_tensors = a

    ctx = _Ctx()
    inter._DotFromTiled.forward(ctx, xt.t(), tiled, dot.flat_idx, dot.flat_idx_t)
    fwd = interleaved_us({
        "current": lambda: inter._DotFromTiled.forward(_Ctx(), xt.t(), tiled, dot.flat_idx, dot.flat_idx_t),
        "native": lambda: kern.dot_fwd(xt, tiled)}, blocks, 20)
    bwd = interleaved_us({
        "current": lambda: inter._DotFromTiled.backward(ctx, gt.t()),
        "native": lambda: kern.dot_bwd(gt, xt, tiled)}, blocks, 20)
    flush = torch.empty(16 * 1024 * 1024)
    scaled = torch.empty_like(vals)
    ex = idx[:, None].expand(-1, d)
    upd = interleaved_us({
        "flush": lambda: flush.add_(1.0),
        "current": lambda: (flush.add_(1.0), w1.scatter_add_(0, ex, torch.mul(vals, -0.1, out=scaled))),
        "native": lambda: (flush.add_(1.0), kern.sparse_sgd_rows(w2, idx, vals, -0.1))}, max(6, blocks // 3), 5)
    out["parts_us"] = {
        "interaction_fwd": {"current": fwd["current"], "native": fwd["native"]},
        "interaction_bwd": {"current": bwd["current"], "native": bwd["native"]},
        "sparse_sgd": {"current": upd["current"] - upd["flush"], "native": upd["native"] - upd["flush"]},
    }
    return out


def time_step(patch: NativePatch, blocks: int, iters: int) -> dict[str, Any]:
    spec = bench_spec(1_000_000, 8, 16, 1)
    trainer = Trainer(spec, TrainSpec(optimizer="sgd", lr=0.1, batch_size=2048), backend="fused", device="cpu")
    batches = random_batches(spec, 2048, 8)
    for i in range(20):
        trainer.step(batches[i % 8])
    res: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(blocks):
        for on in (False, True):
            patch.on = on
            trainer.step(batches[0])  # untimed: the other side's block ran last
            t = time.perf_counter()
            for i in range(iters):
                trainer.step(batches[i % 8])
            res[on].append((time.perf_counter() - t) / iters * 1e3)
    patch.on = False
    ratios = [a / b for a, b in zip(res[False], res[True])]
    return {"current_ms": statistics.median(res[False]), "native_ms": statistics.median(res[True]),
            "speedup_median_of_pairs": statistics.median(ratios), "block_pairs": blocks, "iters_per_block": iters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=30, help="interleaved block pairs (parts and whole step)")
    ap.add_argument("--iters", type=int, default=10, help="steps per block")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    mach = machine()
    if not mach["avx512"]:
        print("native_kernels_probe: the kernels need AVX-512; this CPU has none", file=sys.stderr)
        return 2
    log(f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, {mach['threads']} threads")
    log("compiling the native kernels (about 40 s) ...")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            kern = build(tmp)
        except (RuntimeError, OSError, ImportError) as e:  # no compiler or headers: one line
            print(f"native_kernels_probe: cannot build the kernels ({str(e).strip().splitlines()[-1]})", file=sys.stderr)
            return 2
        result: dict[str, Any] = {"machine": mach}
        result.update(check_and_time_parts(kern, args.blocks))
        c = result["correctness"]
        log(f"correctness: interaction forward max |diff| {c['interaction_fwd_max_abs_diff']:.2e} (values up to "
            f"{c['interaction_fwd_max_abs']:.1f}), backward {c['interaction_bwd_x_max_abs_diff']:.2e} / "
            f"{c['interaction_bwd_tables_max_abs_diff']:.2e}; sparse SGD bit-identical: {c['sparse_sgd_bit_identical']}")
        for k, v in result["parts_us"].items():
            log(f"{k:16s} current {v['current']:8.1f} us   native {v['native']:8.1f} us   "
                f"saves {v['current'] - v['native']:7.1f} us")
        patch = NativePatch(kern)
        try:
            result["step"] = time_step(patch, args.blocks, args.iters)
        finally:
            patch.restore()
    s = result["step"]
    log(f"training step: current {s['current_ms']:.2f} ms, with native kernels {s['native_ms']:.2f} ms; "
        f"median of {s['block_pairs']} pairwise ratios {s['speedup_median_of_pairs']:.3f}x")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
