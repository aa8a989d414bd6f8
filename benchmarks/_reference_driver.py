"""Runs the reference dlrm_s_pytorch.py's training step on request, for interleaved timing.

Used by train_throughput.py (`--reference-mode interleaved|both`). It loads the reference script
as a module in this separate process and builds what the script's `run()` builds for the
benchmark command line: DLRM_Net (dot interaction, sigmoid top, BCE loss), torch.optim.SGD over
all parameters (sparse embedding gradients) and LRPolicyScheduler without warm-up or decay. A
step is the statements the script's training loop times between t1 and t2: its `dlrm_wrap` and
`loss_fn_wrap`, the loss copied to numpy, zero_grad, backward, optimizer and scheduler step.

The batches come from a file the caller writes (the same batches recstack trains on, in the
reference's format: per-table index tensors and [T, B] offsets). Protocol on stdin/stdout, one
line each: `run N [W]` -> `ms M` (W untimed steps, then the mean ms per step over N steps,
timed here with perf_counter), `quit` -> exit. Nothing else is printed on stdout.

    python _reference_driver.py REF_PATH BATCHES.pt DIM EMB BOT TOP   (the script's --arch-* values)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import sys
import time
import types

import numpy as np
import torch


def stub_tensorboard() -> None:
    """A do-nothing torch.utils.tensorboard when tensorboard is not installed (the reference
    imports it at module level and only logs scalars through it)."""
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")

        class SummaryWriter:
            def __init__(self, *a: object, **k: object) -> None:
                pass

            def __getattr__(self, name: str) -> object:
                return lambda *a, **k: None

        stub.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = stub


def load_reference(path: str) -> types.ModuleType:
    """The reference script as a module (its optional TensorBoard import stubbed when absent)."""
    stub_tensorboard()
    ref_dir = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, ref_dir)
    spec = importlib.util.spec_from_file_location("dlrm_s_pytorch_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):  # its import-time notices (onnx, mlperf_logging)
        spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("batches")
    ap.add_argument("dim", type=int, help="--arch-sparse-feature-size")
    ap.add_argument("emb", help="--arch-embedding-size, e.g. 1000000-1000000")
    ap.add_argument("bot", help="--arch-mlp-bot, e.g. 13-512-256-64-16")
    ap.add_argument("top", help="--arch-mlp-top without its input width, e.g. 512-256-1")
    a = ap.parse_args()
    mod = load_reference(a.path)
    np.random.seed(123)  # the benchmark command line's --numpy-rand-seed
    ln_emb = np.array([int(x) for x in a.emb.split("-")])
    ln_bot = np.array([int(x) for x in a.bot.split("-")])
    n_fea = ln_emb.size + 1  # dot interaction without self-pairs, as the script computes it
    ln_top = np.array([n_fea * (n_fea - 1) // 2 + ln_bot[-1], *(int(x) for x in a.top.split("-"))])
    dlrm = mod.DLRM_Net(
        a.dim, ln_emb, ln_bot, ln_top, arch_interaction_op="dot",
        arch_interaction_itself=False, sigmoid_bot=-1, sigmoid_top=ln_top.size - 2, sync_dense_params=True,
        loss_threshold=0.0, ndevices=-1, qr_flag=False, qr_operation="mult", qr_collisions=4, qr_threshold=200,
        md_flag=False, md_threshold=200, weighted_pooling=None, loss_function="bce",
    )
    mod.dlrm, mod.ndevices = dlrm, -1  # globals its dlrm_wrap / loss_fn_wrap read
    mod.args = argparse.Namespace(loss_function="bce")
    opt = torch.optim.SGD(dlrm.parameters(), lr=0.1)
    sched = mod.LRPolicyScheduler(opt, 0, 0, 0)
    batches = torch.load(a.batches)
    cpu = torch.device("cpu")
    k = 0

    def step() -> None:
        nonlocal k
        x, l_o, l_i, t = batches[k % len(batches)]
        k += 1
        z = mod.dlrm_wrap(x, l_o, l_i, False, cpu, ndevices=-1)
        e = mod.loss_fn_wrap(z, t, False, cpu)
        e.detach().cpu().numpy()
        opt.zero_grad()
        e.backward()
        opt.step()
        sched.step()

    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        for _ in range(int(cmd[2]) if len(cmd) > 2 else 0):  # untimed warm-up steps
            step()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        print(f"ms {(time.perf_counter() - t0) / n * 1e3:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
