"""The MLP block shared by every model (bottom, top, towers, attention units).

A stack of Linear (+ReLU) layers with the reference initialisation. The constructor signature
is a stable contract; the layers stay ordinary `nn.Linear` modules in `self.layers`, so state
dicts, pruning masks and checkpoints see the same parameters whichever path runs.

Fast CPU path. On x86 CPUs the fp32 GEMMs PyTorch reaches through `addmm`/`mm` (MKL) run at about
half the speed oneDNN reaches on the same shapes (on the 2-core AVX-512 AMD machine class we
develop on: ~200 vs ~450 GFLOP/s for 2048x512x512; MKL takes a slow code path on non-Intel CPUs).
For fp32 CPU tensors the forward and backward of each Linear(+ReLU) therefore run as one
autograd Function that calls oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`) for all three
GEMMs, with the bias and the ReLU fused into the forward GEMM, and saves the layer output (not the
pre-activation) for the ReLU mask. The numerics are fp32 GEMMs as before (only the summation
order, hence float rounding, differs). Anything unusual (other devices or dtypes, autocast,
torch.compile tracing, dispatch modes such as FlopCounterMode, hooks on the layers, oneDNN
missing) takes the plain module path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from recstack.models.init import init_linear

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_ACTS = ("none", "relu", "sigmoid")


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str) -> torch.Tensor:
    """x @ w.T (+ b) (then `act`, "none" or "relu") by oneDNN; x and w may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], "")


class _LinearAct(torch.autograd.Function):
    """y = act(x @ W.T + b) with every GEMM on oneDNN; x is 2-D, act is "none" or "relu"."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, relu: bool) -> torch.Tensor:  # type: ignore[override]
        y = _onednn_linear(x, w, b, "relu" if relu else "none")
        ctx.relu = relu
        ctx.has_bias = b is not None
        # relu(z) > 0 exactly where z > 0, so the output doubles as the mask: no extra tensor kept.
        ctx.save_for_backward(x, w, y if relu else None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        x, w, y = ctx.saved_tensors
        if ctx.relu:
            g = torch.ops.aten.threshold_backward(g, y, 0)
        gx = gw = gb = None
        need_gb = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[0]:  # skipped for the first layer on dense inputs
            gx = _onednn_linear(g, w.t(), None, "none")
        if ctx.needs_input_grad[1]:
            # oneDNN wants the GEMM's left operand row-major and copies it otherwise, so transpose
            # the smaller of x and g. Narrow inputs (DLRM's 13 and 52 wide first layers): compute
            # dW.T = x.T @ g from a copied x.T, with a row of ones appended so that the same GEMM
            # also yields the bias gradient (the column sums of g) without another pass over g.
            k = w.shape[1]
            if k < w.shape[0]:
                xt = x.t()
                if need_gb:
                    xt = torch.cat([xt, xt.new_ones(1, xt.shape[1])])
                r = _onednn_linear(xt.contiguous(), g.t(), None, "none")
                gw = r[:k].t()
                if need_gb:
                    gb = r[k]
                    need_gb = False
            else:
                gw = _onednn_linear(g.t(), x.t(), None, "none")
        if need_gb:
            gb = g.sum(0)
        return gx, gw, gb, None


class MLP(nn.Module):
    """Linear+ReLU layers over `sizes` (input width first, e.g. [13, 512, 256, 64, 16]).

    `relu_last=False` leaves the last layer linear (a logit); `sigmoid_last=True` applies a
    sigmoid after it instead. Weights come from `seed_gen` (the global RNG when None), in order.
    Set `fast = False` (instance or class attribute) to force the plain nn.Sequential path,
    e.g. to compare against it.
    """

    fast: bool = True

    def __init__(
        self,
        sizes: list[int],
        sigmoid_last: bool = False,
        relu_last: bool = True,
        seed_gen: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"MLP needs an input and at least one layer size, got {sizes}")
        self.sizes = list(sizes)
        layers: list[nn.Module] = []
        self._plan: list[tuple[int, str]] = []  # (index of the Linear in self.layers, activation)
        n = len(sizes) - 1
        for i in range(n):
            self._plan.append((len(layers), "none"))
            layers.append(init_linear(nn.Linear(sizes[i], sizes[i + 1]), seed_gen))
            last = i == n - 1
            if last and sigmoid_last:
                layers.append(nn.Sigmoid())
                self._plan[-1] = (self._plan[-1][0], "sigmoid")
            elif not last or relu_last:
                layers.append(nn.ReLU())
                self._plan[-1] = (self._plan[-1][0], "relu")
        self.layers = nn.Sequential(*layers)

    def _fast_ok(self, x: torch.Tensor) -> bool:
        """Whether the oneDNN path applies (and computes exactly what self.layers would)."""
        if not (self.fast and _ONEDNN) or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if x.dim() < 2 or x.numel() == 0 or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
            return False
        if is_in_torch_dispatch_mode():  # FlopCounterMode, fake tensors...: let them see aten linear ops
            return False
        if torch.jit.is_scripting() or len(self.layers) != len(self._plan) + sum(a != "none" for _, a in self._plan):
            return False
        for m in self.layers:
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
                return False
            if isinstance(m, nn.Linear) and (
                m.weight.dtype != torch.float32 or m.weight.device.type != "cpu" or type(m) is not nn.Linear
                or torch.nn.utils.parametrize.is_parametrized(m)
            ):
                return False
        return not (self._forward_hooks or self._forward_pre_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_ok(x):
            return self.layers(x)
        lead = x.shape[:-1] if x.dim() != 2 else None
        h = x if lead is None else x.reshape(-1, x.shape[-1])
        for idx, act in self._plan:
            lin = self.layers[idx]
            h = _LinearAct.apply(h, lin.weight, lin.bias, act == "relu")
            if act == "sigmoid":
                h = torch.sigmoid(h)
        return h if lead is None else h.reshape(*lead, h.shape[-1])
