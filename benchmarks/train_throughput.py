"""DLRM training-step throughput on CPU, side by side with the reference dlrm_s_pytorch.py.

What it measures: recstack's real training step, `recstack.train.Trainer.step` (the model from
`recstack.models.build_model`: forward, BCE-with-logits loss, backward, dense SGD and sparse
embedding SGD), fp32, on pre-generated random batches (data loading excluded), for the
configuration of REFERENCE.md section 1: bottom MLP 13-512-256-64-16, top MLP 512-256-1
(input 52 = 16 + 9*8/2), dot interaction, 8 tables x 1M rows, dim 16, one index per bag,
batch 2048, SGD lr 0.1.

How: `--warmup` steps first, then `--repeats` repetitions of `--iters` steps each, timed with
perf_counter; ms/it is the median over the repetitions (spread reported as min/max). With
`--rounds R` our measurement and the reference run alternate R times (interleaved, because the
machine is shared and timings drift); every repetition of every round enters our median.

Reference: `--reference PATH/dlrm_s_pytorch.py` measures the reference implementation on the
same configuration and numerics (fp32, BCE loss, random data, same torch and thread count) in
two ways (`--reference-mode both`, the default):
- subprocess: the script runs unmodified and its ms/it prints (every `--print-freq` iterations)
  are parsed; its number is the median of the prints after the first (the first includes
  warm-up), as REFERENCE.md describes. Its timer starts after each batch is fetched, so data
  generation is excluded, but the generation runs between timed steps (colder caches).
- interleaved: `_reference_driver.py` builds the script's model, optimizer and scheduler in a
  helper process and runs the statements its loop times, on the same pre-generated batches as
  recstack, in blocks of `--iters` steps that alternate with recstack's blocks (`--blocks`
  pairs per round). Bursts of load on a shared machine then hit both sides alike; the
  pairwise ratios are reported too.
The reference's optional TensorBoard import is stubbed when tensorboard is not installed (it
only logs scalars). Without `--reference` the published anchor (35-39 ms/it, REFERENCE.md) is
printed, labelled as such, not as a measurement.

Also reported: a per-component breakdown of the step (each part of the same model timed on its
own: bottom/top MLP forward and backward, interaction, embeddings forward/backward/update, loss,
dense optimizer), achieved MLP GFLOP/s (MLP FLOPs per step / measured MLP forward+backward time;
MLP FLOPs = 2*B*in*out per Linear for the forward, the same again for the weight gradient and
for the input gradient, except the first bottom layer, whose dense input needs no gradient),
embedding GB/s (bytes of embedding rows gathered in the forward plus rows read and written by
the update, 3*B*T*L*dim*4, over the embedding forward+backward+update time), and the machine's
fp32 GEMM rate on 2048x512x512 through torch.mm and through oneDNN, measured after every round
(so under the same load as the step timings) and reported as the median over rounds.

GEMM floor: the oneDNN GEMM calls of one recstack step (recorded once, same shapes and strides)
are replayed on their own after every repetition set and after every recstack block of the
interleaved comparison; `gemm_floor` reports their time, the step's non-GEMM remainder and the
speed-up ceiling (reference time / GEMM floor): the most any step built on these same GEMM
calls could reach on this machine.

Precision: fp32 by default, the issue's comparison. `--precision bf16` runs recstack's step with
`TrainSpec.precision = "bf16"` (MLPs and interaction under bfloat16 autocast, fp32 weights,
embeddings and loss) against the fp32 reference: a speed-up at different numerics, labelled so;
the GEMM floor and the breakdown are fp32 notions and are skipped.

Noise: with torch's default of one OpenMP thread per core, any other busy process on the machine
slows every parallel region (both implementations alike) by up to 20x; run on an otherwise idle
machine, keep --rounds >= 2 so that a burst of load hits both sides, and check min/max.
`--threads 1` gives a contention-robust comparison (the reference then runs with OMP_NUM_THREADS=1).

Energy: `--energy` meters the timed recstack repetitions only (not warm-up, GEMM probes, the
breakdown or the reference) with recstack.sustain.meters and reports `energy_j_per_iter` and its
method: "measured" (RAPL) or "estimated" (CPU time x the hardware config's TDP and idle power,
when RAPL is absent or unreadable, as in most VMs).

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --reference /path/to/dlrm/dlrm_s_pytorch.py --rounds 3
    python benchmarks/train_throughput.py --json --compare-plain
    python benchmarks/train_throughput.py --energy --no-breakdown
    python benchmarks/train_throughput.py --precision bf16 --reference PATH   # recstack bf16 vs fp32 reference
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from recstack.data.batch import Batch, SparseBatch
from recstack.machine import cpu_facts
from recstack.models import mlp as mlp_module
from recstack.spec import ModelSpec, TrainSpec
from recstack.sustain.meters import EnergyMeter, EnergyReport
from recstack.train import Trainer

ANCHOR_MS = (35.0, 39.0)  # REFERENCE.md section 1: reference dlrm_s_pytorch.py on a 2-core AVX-512 CPU
BOTTOM = [512, 256, 64, 16]
TOP = [512, 256, 1]
DENSE = 13

# Runs the reference script in a fresh interpreter; stubs torch.utils.tensorboard if absent.
_REF_BOOT = """
import os, runpy, sys
sys.path.insert(0, sys.argv[1])
from _reference_driver import stub_tensorboard
stub_tensorboard()
path = sys.argv[2]
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
runpy.run_path(path, run_name="__main__")
"""
_HERE = os.path.dirname(os.path.abspath(__file__))
_REF_LINE = re.compile(r"Finished training it (\d+)/(\d+) of epoch \d+, ([0-9.]+) ms/it")


# ---------------------------------------------------------------- machine and GEMM peak
def machine() -> dict[str, Any]:
    """cpu_facts() plus torch's version, threads, BLAS and oneDNN."""
    blas = re.search(r"Math Kernel Library Version ([^\s]+)", torch.__config__.show())
    return {
        **cpu_facts(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "blas": f"MKL {blas.group(1)}" if blas else "non-MKL", "onednn": torch.backends.mkldnn.is_available(),
    }


def _median_time(fn: Callable[[], object], iters: int, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t) / iters)
    return statistics.median(out)


def gemm_gflops(n: int = 2048, k: int = 512, m: int = 512, repeats: int = 15) -> dict[str, float]:
    """fp32 [n,k] x [k,m] GEMM rate through torch.mm (the default BLAS) and through oneDNN."""
    a, b = torch.randn(n, k), torch.randn(m, k)
    flops = 2.0 * n * k * m
    fns: dict[str, Callable[[], object]] = {"mm": lambda: torch.mm(a, b.t())}
    if getattr(mlp_module, "_ONEDNN", False):
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    times: dict[str, list[float]] = {k_: [] for k_ in fns}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            times[name].append(_median_time(fn, 5, 1, warmup=1))
    return {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}


# ---------------------------------------------------------------- model, data, step
def bench_spec(rows: int, tables: int, dim: int, pooling: int) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "dlrm-train-bench", "family": "dlrm", "dense_features": DENSE,
        "bottom_mlp": BOTTOM[:-1] + [dim], "top_mlp": TOP, "interaction": "dot",
        "table_groups": [{"name": "t", "count": tables, "rows": rows, "dim": dim, "pooling": pooling,
                          "pooling_dist": "fixed"}],
    })


def random_batches(spec: ModelSpec, batch: int, n: int, seed: int = 0) -> list[Batch]:
    """Pre-generated uniform random batches (ids uniform over each table, dense in [0, 1))."""
    g = torch.Generator().manual_seed(seed)
    pooling = [int(t.pooling) for t in spec.tables]
    out = []
    for _ in range(n):
        ids = torch.cat([torch.randint(0, t.rows, (batch, p), generator=g) for t, p in zip(spec.tables, pooling)], 1)
        out.append(Batch(torch.rand(batch, spec.dense_features, generator=g), SparseBatch.from_fixed(ids, pooling),
                         torch.randint(0, 2, (batch,), generator=g).float()))
    return out


def mlp_flops(spec: ModelSpec, batch: int) -> float:
    """FLOPs of the MLP GEMMs in one training step (forward, weight grad, input grad)."""
    from recstack.models.dlrm import top_input_width

    bottom = [spec.dense_features, *spec.bottom_mlp]
    top = [top_input_width(spec), *spec.top_mlp]
    macs = 0
    for sizes, first_needs_grad in ((bottom, False), (top, True)):
        for i in range(len(sizes) - 1):
            mac = sizes[i] * sizes[i + 1]
            macs += mac * (3 if (i > 0 or first_needs_grad) else 2)
    return 2.0 * batch * macs


def time_steps(trainer: Trainer, batches: list[Batch], iters: int, repeats: int, warmup: int,
               meter: EnergyMeter | None = None) -> list[float]:
    """ms per step of each repetition (iters steps each), after `warmup` steps; `meter` spans the repetitions."""
    n = len(batches)
    for i in range(warmup):
        trainer.step(batches[i % n])
    if meter is not None:
        meter.start()
    out = []
    for r in range(repeats):
        t = time.perf_counter()
        for i in range(iters):
            loss = trainer.step(batches[(r * iters + i) % n])
        loss.item()  # CPU ops are synchronous; this keeps the same shape on other devices
        out.append((time.perf_counter() - t) / iters * 1e3)
    if meter is not None:
        meter.stop()
    return out


def breakdown(trainer: Trainer, batch: Batch, iters: int = 10, repeats: int = 7) -> dict[str, float]:
    """ms per component of one step, each part of the trainer's model timed on its own."""
    m = trainer.model
    lr = trainer.ts.lr
    dense, sparse, labels = batch.dense, batch.sparse, batch.labels
    with torch.no_grad():
        pooled0 = m.embeddings(sparse)
        x0 = m.bottom(dense)
        z0 = m.interaction(x0, pooled0)
        logit0 = m.top(z0).squeeze(-1)
    leaf = lambda t: t.detach().clone().requires_grad_(True)
    res: dict[str, float] = {}

    def clear_grads() -> None:
        # Gradients must not pile up across timed repetitions: sparse ones would grow every time.
        m.zero_grad(set_to_none=True)

    def fwd_bwd(name: str, fwd: Callable[[], Any], grads: Callable[[Any], Any]) -> None:
        state: dict[str, Any] = {}

        def f() -> None:
            state["out"] = fwd()

        def b() -> None:
            out = state["out"]
            torch.autograd.backward(out, grads(out))
            clear_grads()

        def both() -> None:
            f()
            b()

        t_f = _median_time(f, iters, repeats)
        t_fb = _median_time(both, iters, repeats)
        res[f"{name}_fwd"] = t_f * 1e3
        res[f"{name}_bwd"] = max(0.0, t_fb - t_f) * 1e3

    def ones_like_all(out: Any) -> Any:
        return [torch.ones_like(o) for o in out] if isinstance(out, list) else torch.ones_like(out)

    # embeddings: forward; backward (sparse row gradients, or the fused update for fbgemm); update
    fwd_bwd("embeddings", lambda: m.embeddings(sparse), ones_like_all)
    if trainer.sparse_opt is not None:
        clear_grads()
        pooled = m.embeddings(sparse)
        torch.autograd.backward(pooled, ones_like_all(pooled))
        grads = [p.grad for p in trainer.sparse_opt.params]

        def upd() -> None:
            for p, g in zip(trainer.sparse_opt.params, grads):
                p.grad = g
            trainer.sparse_opt.step(lr)

        res["embeddings_update"] = _median_time(upd, iters, repeats) * 1e3
        trainer.sparse_opt.zero_grad()
    else:
        res["embeddings_update"] = 0.0  # fused into the backward (fbgemm)
    xb = leaf(x0)
    if m.embeddings.backend == "fused":
        # the fused lookup hands out row blocks of one tensor, which the interaction reads directly
        tiled = leaf(torch.cat(pooled0))
        pooled_in: Callable[[], list[torch.Tensor]] = lambda: list(tiled.split(dense.shape[0]))
    else:
        pl = [leaf(p) for p in pooled0]
        pooled_in = lambda: pl
    fwd_bwd("bottom_mlp", lambda: m.bottom(dense), ones_like_all)
    fwd_bwd("interaction", lambda: m.interaction(xb, pooled_in()), ones_like_all)
    zl = leaf(z0)
    fwd_bwd("top_mlp", lambda: m.top(zl), ones_like_all)
    ll = leaf(logit0)
    fwd_bwd("loss", lambda: F.binary_cross_entropy_with_logits(ll, labels), lambda out: None)
    for p in m.dense_parameters():
        p.grad = torch.zeros_like(p)
    res["dense_optimizer"] = _median_time(lambda: trainer.dense_opt.step(lr), iters, repeats) * 1e3

    def zero() -> None:
        trainer.dense_opt.zero_grad()
        if trainer.sparse_opt is not None:
            trainer.sparse_opt.zero_grad()

    res["zero_grad"] = _median_time(zero, iters, repeats) * 1e3
    m.zero_grad(set_to_none=True)
    return res


# ---------------------------------------------------------------- reference
def reference_arch(args: argparse.Namespace) -> tuple[str, str, str]:
    """The reference's --arch-embedding-size, --arch-mlp-bot and --arch-mlp-top for this configuration."""
    emb = "-".join([str(args.rows)] * args.tables)
    return emb, f"{DENSE}-{'-'.join(map(str, BOTTOM[:-1]))}-{args.dim}", "-".join(map(str, TOP))


def reference_cmd(path: str, args: argparse.Namespace, batches: int) -> list[str]:
    emb, bot, top = reference_arch(args)
    return [
        sys.executable, "-c", _REF_BOOT, _HERE, path,
        f"--arch-sparse-feature-size={args.dim}", f"--arch-mlp-bot={bot}",
        f"--arch-mlp-top={top}", f"--arch-embedding-size={emb}",
        f"--num-indices-per-lookup={args.pooling}", "--num-indices-per-lookup-fixed=True",
        f"--mini-batch-size={args.batch_size}", "--data-generation=random", "--learning-rate=0.1",
        "--loss-function=bce", f"--print-freq={args.print_freq}", "--print-time", f"--num-batches={batches}",
        "--nepochs=1", "--numpy-rand-seed=123",
    ]


def run_reference(path: str, args: argparse.Namespace) -> tuple[list[float], str]:
    """The reference's printed ms/it values (all prints) and the command line used."""
    batches = args.print_freq * (args.ref_prints + 1)
    cmd = reference_cmd(path, args, batches)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.abspath(path)), check=False)
    vals = [float(m.group(3)) for m in _REF_LINE.finditer(p.stdout)]
    if p.returncode != 0 or not vals:
        tail = (p.stdout + p.stderr)[-2000:]
        raise SystemExit(f"reference run failed (exit {p.returncode}):\n{tail}")
    shown = " ".join([cmd[0], "<bootstrap: stub tensorboard, run_path>", *cmd[4:]])
    return vals, shown


class StepGemms:
    """The oneDNN GEMM calls of one recstack training step, replayed on their own: the step's GEMM floor.

    Records the shapes and strides of every GEMM the MLP fast path runs in one step
    (`recstack.models.mlp._mm_nt`: forward, weight and input gradients of both MLPs) and replays
    the same calls on fresh operands. Their time is what the step would take if everything else
    (embeddings, interaction, elementwise passes, loss, optimizers, autograd and Python) were
    free; the reference's time over it bounds the speed-up any implementation of the same fp32
    GEMMs on this machine could reach. Not included: the logit layer's GEMV (torch.mm, ~0.1 ms)
    and the interaction's batched 9x9 products.
    """

    def __init__(self, trainer: Trainer, batch: Batch) -> None:
        calls: list[tuple[torch.Size, tuple[int, ...], torch.Size, tuple[int, ...]]] = []
        real = mlp_module._mm_nt

        def recording(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            calls.append((a.shape, a.stride(), b.shape, b.stride()))
            return real(a, b)

        mlp_module._mm_nt = recording
        try:
            trainer.step(batch)
        finally:
            mlp_module._mm_nt = real
        self.ops = [(torch.empty_strided(sa, ta).normal_(), torch.empty_strided(sb, tb).normal_())
                    for sa, ta, sb, tb in calls]
        self.flops = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[0] for a, b in self.ops)

    def run(self) -> None:
        for a, b in self.ops:
            mlp_module._mm_nt(a, b)

    def time(self, iters: int) -> float:
        """ms per GEMM set over `iters` sets, after one untimed set."""
        self.run()
        t = time.perf_counter()
        for _ in range(iters):
            self.run()
        return (time.perf_counter() - t) / iters * 1e3


class InterleavedReference:
    """The reference's step in a separate process (_reference_driver.py), run in blocks on request.

    Lets blocks of reference steps alternate with blocks of recstack steps a few hundred
    milliseconds apart, so a burst of load on this shared machine hits both alike. Only one of the
    two processes computes at a time; each keeps its own memory and allocator.
    """

    def __init__(self, path: str, args: argparse.Namespace, batches: list[Batch], tmp: str) -> None:
        ref_batches = []
        for b in batches:
            tabs = [b.sparse.table(t) for t in range(b.sparse.num_tables)]
            ref_batches.append((b.dense, torch.stack([off[:-1] for _, off in tabs]), [idx for idx, _ in tabs],
                                b.labels.view(-1, 1)))
        data = os.path.join(tmp, "reference_batches.pt")
        torch.save(ref_batches, data)
        driver = os.path.join(_HERE, "_reference_driver.py")
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        self.proc = subprocess.Popen(
            [sys.executable, driver, path, data, str(args.dim), *reference_arch(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=os.path.dirname(os.path.abspath(path)),
        )
        if self._line() != "ready":
            raise SystemExit("reference driver failed to start (see its error above)")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"reference driver exited (code {self.proc.wait()})")
        return line.strip()

    def run(self, n: int, warm: int = 0) -> float:
        """Mean ms per reference step over n steps, after `warm` untimed ones."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {n} {warm}\n")
        self.proc.stdin.flush()
        return float(self._line().split()[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)


def interleaved(trainer: Trainer, batches: list[Batch], ref: InterleavedReference, iters: int, blocks: int,
                warmup: int, floor: StepGemms | None = None) -> tuple[list[float], list[float], list[float]]:
    """ms/it of `blocks` pairs of blocks of `iters` recstack and `iters` reference steps, the order
    swapped every pair; returns (recstack, reference, GEMM floor) values, pairwise aligned. Each
    block starts with one untimed step on either side: the other process has just evicted its
    caches, which a training run alone never sees. With `floor`, a block of its GEMM sets follows
    each recstack block (same conditions)."""
    n = len(batches)
    for i in range(warmup):
        trainer.step(batches[i % n])
    ref.run(warmup)
    ours: list[float] = []
    theirs: list[float] = []
    gemms: list[float] = []
    for k in range(blocks):
        if k % 2:
            theirs.append(ref.run(iters, warm=1))
        trainer.step(batches[(k * iters + iters) % n])
        t = time.perf_counter()
        for i in range(iters):
            loss = trainer.step(batches[(k * iters + i) % n])
        loss.item()
        ours.append((time.perf_counter() - t) / iters * 1e3)
        if floor is not None:
            gemms.append(floor.time(iters))
        if not k % 2:
            theirs.append(ref.run(iters, warm=1))
    return ours, theirs, gemms


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--pooling", type=int, default=1, help="indices per bag (fixed)")
    ap.add_argument("--backend", default="fused", choices=["torch", "fused", "fbgemm"],
                    help="embedding backend of the model (default: fused, the fastest here on CPU; recstack train --backend)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: recstack's dense compute under bfloat16 autocast (TrainSpec.precision); the "
                         "reference stays fp32, so that speed-up is not at the same numerics; no GEMM floor or "
                         "breakdown then (default: fp32, the issue's comparison)")
    ap.add_argument("--batches", type=int, default=8, help="distinct pre-generated batches, cycled")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10, help="steps per timed repetition")
    ap.add_argument("--repeats", type=int, default=10, help="timed repetitions per round")
    ap.add_argument("--rounds", type=int, default=1, help="alternations of ours and the reference")
    ap.add_argument("--reference", metavar="PATH", help="path to the reference dlrm_s_pytorch.py")
    ap.add_argument("--reference-mode", choices=["both", "subprocess", "interleaved"], default="both",
                    help="subprocess: run the script unmodified and parse its printed ms/it; interleaved: run its "
                         "model and loop body in a helper process in blocks alternating with recstack's (robust to "
                         "load bursts); both (default)")
    ap.add_argument("--blocks", type=int, default=20, help="interleaved mode: block pairs per round")
    ap.add_argument("--print-freq", type=int, default=10, help="reference print frequency (iterations)")
    ap.add_argument("--ref-prints", type=int, default=10, help="reference prints kept per run (after the first)")
    ap.add_argument("--compare-plain", action="store_true",
                    help="also time the same step with the plain (non-oneDNN) MLP path")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--energy", action="store_true",
                    help="meter the timed recstack steps (RAPL if readable, else a labelled estimate)")
    ap.add_argument("--energy-hardware", metavar="NAME", help="hardware config for --energy (default: detected)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    spec = bench_spec(args.rows, args.tables, args.dim, args.pooling)
    ts = TrainSpec(optimizer="sgd", lr=0.1, batch_size=args.batch_size, precision=args.precision)
    bf16 = args.precision == "bf16"
    mach = machine()
    log(f"machine: {mach['cpu']}, {mach['cores']} cores, avx512={mach['avx512']}, amx={mach['amx']}, "
        f"torch {mach['torch']} ({mach['blas']}, oneDNN={mach['onednn']}), {mach['threads']} threads")
    trainer = Trainer(spec, ts, backend=args.backend, device="cpu")
    batches = random_batches(spec, args.batch_size, args.batches)
    log(f"config: bottom {DENSE}-{'-'.join(map(str, spec.bottom_mlp))}, top "
        f"{'-'.join(map(str, spec.top_mlp))}, {args.tables} tables x {args.rows} rows, dim {args.dim}, "
        f"{args.pooling} index/bag, batch {args.batch_size}, SGD lr 0.1, "
        f"{'bf16 autocast (reference: fp32)' if bf16 else 'fp32'}, backend {args.backend}")
    log(f"method: {args.warmup} warm-up steps, then {args.repeats} repetitions x {args.iters} steps per round, "
        f"{args.rounds} round(s); median of per-repetition ms/it")

    ours: list[float] = []
    plain: list[float] = []
    ref: list[float] = []
    round_ratios: list[float] = []  # reference / recstack medians of the same round (adjacent in time)
    il_ours: list[float] = []
    il_ref: list[float] = []
    subproc = bool(args.reference) and args.reference_mode in ("both", "subprocess")
    tmpdir = tempfile.TemporaryDirectory()
    inter = InterleavedReference(args.reference, args, batches, tmpdir.name) \
        if args.reference and args.reference_mode in ("both", "interleaved") else None
    ref_cmd = ""
    floor = None if bf16 else StepGemms(trainer, batches[0])  # bf16: autocast, not the oneDNN fp32 path
    floor_ms: list[float] = []  # GEMM floor after each repetition set (same conditions as ours)
    il_floor: list[float] = []
    gemm_rounds: list[dict[str, float]] = []
    energy: list[EnergyReport] = []
    for r in range(args.rounds):
        meter = EnergyMeter(args.energy_hardware, gpus=False) if args.energy else None
        ours += time_steps(trainer, batches, args.iters, args.repeats, args.warmup if r == 0 else 3, meter)
        if meter is not None and meter.report is not None:
            energy.append(meter.report)
        if floor is not None:
            floor_ms += [floor.time(args.iters) for _ in range(args.repeats)]
        log(f"round {r + 1}: recstack {statistics.median(ours[-args.repeats:]):.2f} ms/it"
            + (f"; its GEMMs alone {statistics.median(floor_ms[-args.repeats:]):.2f} ms" if floor_ms else ""))
        gemm_rounds.append(gemm_gflops(repeats=7))  # the machine's GEMM rate under the same conditions
        if args.compare_plain:
            mlp_module.MLP.fast = False
            try:
                plain += time_steps(trainer, batches, args.iters, args.repeats, 3)
            finally:
                mlp_module.MLP.fast = True
            log(f"round {r + 1}: recstack, plain MLP path {statistics.median(plain[-args.repeats:]):.2f} ms/it")
        if inter is not None:
            a, b, c = interleaved(trainer, batches, inter, args.iters, args.blocks, 10 if r == 0 else 2, floor)
            il_ours += a
            il_ref += b
            il_floor += c
            log(f"round {r + 1}: interleaved: recstack {statistics.median(a):.2f}, reference "
                f"{statistics.median(b):.2f} ms/it -> {statistics.median(b) / statistics.median(a):.2f}x"
                + (f"; recstack's GEMMs alone {statistics.median(c):.2f} ms" if c else ""))
        if subproc:
            vals, ref_cmd = run_reference(args.reference, args)
            ref += vals[1:]
            round_ratios.append(statistics.median(vals[1:]) / statistics.median(ours[-args.repeats:]))
            log(f"round {r + 1}: reference {statistics.median(vals[1:]):.2f} ms/it (prints {vals}); "
                f"round speed-up {round_ratios[-1]:.2f}x")

    if inter is not None:
        inter.close()
    tmpdir.cleanup()
    out: dict[str, Any] = {"machine": mach, "config": {
        "bottom_mlp": [DENSE, *spec.bottom_mlp], "top_mlp": spec.top_mlp, "tables": args.tables,
        "rows": args.rows, "dim": args.dim, "pooling": args.pooling, "batch_size": args.batch_size,
        "optimizer": "sgd", "lr": 0.1, "dtype": args.precision, "backend": args.backend, "interaction": "dot",
        "reference_dtype": "fp32"}}
    ms = statistics.median(ours)
    out["ms_per_iter"] = ms
    out["ms_per_iter_min_max"] = [min(ours), max(ours)]
    out["method"] = {"warmup": args.warmup, "iters_per_repeat": args.iters, "repeats_per_round": args.repeats,
                     "rounds": args.rounds, "statistic": "median over repetitions"}
    out["samples_per_s"] = args.batch_size / ms * 1e3
    if energy:
        methods = {e.method for e in energy}
        out["energy_j_per_iter"] = sum(e.total_j for e in energy) / (len(ours) * args.iters)
        out["energy_method"] = methods.pop() if len(methods) == 1 else "mixed"
        out["energy"] = [e.to_dict() for e in energy]  # one report per round
    if plain:
        out["plain_mlp_ms_per_iter"] = statistics.median(plain)
    gemm = {k: statistics.median(g[k] for g in gemm_rounds) for k in gemm_rounds[0]}  # median over rounds
    out["gemm_gflops"] = gemm
    out["gemm_peak_gflops"] = max(gemm.values())
    flops = mlp_flops(spec, args.batch_size)
    out["mlp_flops_per_iter"] = flops
    emb_bytes = 3.0 * args.batch_size * args.tables * args.pooling * args.dim * 4
    out["emb_bytes_per_iter"] = emb_bytes
    out["mlp_gflops"] = out["emb_gbps"] = None  # measured by the breakdown (skipped with --no-breakdown)
    if not args.no_breakdown and not bf16:  # the parts are timed outside the step's autocast
        bd = breakdown(trainer, batches[0])
        out["breakdown_ms"] = bd
        mlp_ms = bd["bottom_mlp_fwd"] + bd["bottom_mlp_bwd"] + bd["top_mlp_fwd"] + bd["top_mlp_bwd"]
        emb_ms = bd["embeddings_fwd"] + bd["embeddings_bwd"] + bd["embeddings_update"]
        parts = sum(bd.values())
        out["breakdown_ms"]["sum_of_parts"] = parts
        out["breakdown_ms"]["other"] = ms - parts  # autograd engine, glue, cache effects between parts
        out["mlp_ms"] = mlp_ms
        out["mlp_gflops"] = flops / (mlp_ms / 1e3) / 1e9
        out["emb_ms"] = emb_ms
        out["emb_gbps"] = emb_bytes / (emb_ms / 1e3) / 1e9
    if ref:
        out["reference_ms_per_iter"] = statistics.median(ref)
        out["reference_ms_per_iter_min_max"] = [min(ref), max(ref)]
        out["speedup_vs_reference"] = out["reference_ms_per_iter"] / ms
        out["speedup_per_round"] = round_ratios
        out["speedup_median_of_rounds"] = statistics.median(round_ratios)
        out["reference_command"] = ref_cmd
    if il_ours:
        pairs = [b / a for a, b in zip(il_ours, il_ref)]
        out["interleaved"] = {
            "recstack_ms_per_iter": statistics.median(il_ours), "reference_ms_per_iter": statistics.median(il_ref),
            "speedup": statistics.median(il_ref) / statistics.median(il_ours),
            "speedup_median_of_pairs": statistics.median(pairs), "speedup_pairs_min_max": [min(pairs), max(pairs)],
            "block_pairs": len(pairs), "iters_per_block": args.iters,
        }
        out.setdefault("speedup_vs_reference", out["interleaved"]["speedup"])
    if floor is not None:
        fl = statistics.median(floor_ms)
        out["gemm_floor"] = {
            "gemm_calls": len(floor.ops), "gflop_per_iter": floor.flops / 1e9, "ms_per_iter": fl,
            "gflops": floor.flops / fl / 1e6, "non_gemm_ms": ms - fl, "gemm_share_of_step": fl / ms,
        }
        if ref:
            out["gemm_floor"]["speedup_ceiling_vs_script"] = out["reference_ms_per_iter"] / fl
        if il_ours:
            ilf = statistics.median(il_floor)
            out["gemm_floor"]["interleaved_ms_per_iter"] = ilf
            out["gemm_floor"]["speedup_ceiling_interleaved"] = out["interleaved"]["reference_ms_per_iter"] / ilf
    if not ref and not il_ours:
        out["reference_anchor_ms_per_iter"] = list(ANCHOR_MS)
        out["reference_anchor_note"] = "published anchor from REFERENCE.md section 1, not measured here"

    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"\nrecstack step: {ms:.2f} ms/it median (min {min(ours):.2f}, max {max(ours):.2f}; "
          f"{len(ours)} repetitions x {args.iters} steps), {out['samples_per_s']:.0f} samples/s")
    if energy:
        cpu = energy[0].to_dict()["components"].get("cpu", {})
        print(f"energy: {out['energy_j_per_iter']:.3f} J/it ({out['energy_method']}; {cpu.get('source', '')})")
        for note in energy[0].notes:
            print(f"  {note}")
    if plain:
        print(f"recstack step with the plain MLP path: {out['plain_mlp_ms_per_iter']:.2f} ms/it median")
    if ref:
        print(f"reference dlrm_s_pytorch.py, measured side by side: {out['reference_ms_per_iter']:.2f} ms/it median "
              f"({len(ref)} prints of {args.print_freq} it) -> speed-up {out['speedup_vs_reference']:.2f}x "
              f"(median of the {len(round_ratios)} per-round ratios {out['speedup_median_of_rounds']:.2f}x, "
              f"range {min(round_ratios):.2f}-{max(round_ratios):.2f})")
    if il_ours:
        iv = out["interleaved"]
        print(f"reference, interleaved blocks ({iv['block_pairs']} pairs of {args.iters} it, its model and loop body "
              f"in a helper process): recstack {iv['recstack_ms_per_iter']:.2f}, reference "
              f"{iv['reference_ms_per_iter']:.2f} ms/it -> speed-up {iv['speedup']:.2f}x (median of pairwise ratios "
              f"{iv['speedup_median_of_pairs']:.2f}x, range {iv['speedup_pairs_min_max'][0]:.2f}-"
              f"{iv['speedup_pairs_min_max'][1]:.2f})")
    if not ref and not il_ours:
        print(f"reference: published anchor {ANCHOR_MS[0]:.0f}-{ANCHOR_MS[1]:.0f} ms/it (REFERENCE.md; NOT measured "
              "here; pass --reference PATH/dlrm_s_pytorch.py to measure it side by side)")
    gf = out.get("gemm_floor", {})
    if gf:
        print(f"GEMM floor: the step's {gf['gemm_calls']} oneDNN GEMMs ({gf['gflop_per_iter']:.2f} GFLOP) alone take "
              f"{gf['ms_per_iter']:.2f} ms ({gf['gflops']:.0f} GFLOP/s), {gf['gemm_share_of_step']:.0%} of the step; "
              f"everything else {gf['non_gemm_ms']:.2f} ms")
    for key, label in (("speedup_ceiling_vs_script", "the script's"), ("speedup_ceiling_interleaved", "the interleaved")):
        if key in gf:
            print(f"  speed-up ceiling over {label} reference time if nothing but these GEMMs cost anything: "
                  f"{gf[key]:.2f}x")
    if bf16:
        print("precision: recstack bf16 autocast, the reference fp32: the speed-ups above are NOT at the same "
              "numerics (the issue's comparison is --precision fp32)")
    print("GEMM 2048x512x512 fp32: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()))
    if "breakdown_ms" in out:
        print(f"MLPs: {out['mlp_ms']:.2f} ms for {flops / 1e9:.2f} GFLOP -> {out['mlp_gflops']:.0f} GFLOP/s "
              f"({out['mlp_gflops'] / out['gemm_peak_gflops']:.0%} of the measured GEMM rate)")
        print(f"embeddings: {out['emb_ms']:.2f} ms for {emb_bytes / 1e6:.2f} MB -> {out['emb_gbps']:.2f} GB/s")
        print("breakdown (ms, each part timed on its own):")
        for k, v in out["breakdown_ms"].items():
            print(f"  {k:<20} {v:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
