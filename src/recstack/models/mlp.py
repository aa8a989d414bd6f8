"""The MLP block shared by every model (bottom, top, towers, attention units).

A stack of Linear (+ReLU) layers with the reference initialisation. The constructor signature
is a stable contract; the layers stay ordinary `nn.Linear` modules in `self.layers`, so state
dicts, pruning masks and checkpoints see the same parameters whichever path runs.

Fast CPU path. On x86 CPUs the fp32 GEMMs PyTorch reaches through `addmm`/`mm` (MKL) run slower
than oneDNN's on the same shapes (on the 2-core AVX-512 AMD machine class we develop on about
145 vs 175 GFLOP/s for 2048x512x512; MKL takes a slow code path on non-Intel CPUs). For fp32 CPU
tensors the whole stack therefore runs as one autograd Function (`_FeatureMajorMLP`) whose every
GEMM is oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`).

It keeps activations feature-major (each layer's output as [features, batch], the transpose of
the usual layout). oneDNN wants a GEMM's left operand row-major and copies it otherwise, and the
weight gradient dW = dZ^T X needs one of dZ or X transposed: in the usual layout that is a
single-threaded multi-MB transpose copy per layer per step (about 2 ms each for DLRM's 512-wide
layers, a quarter of the MLP time). Feature-major, every operand is already in the layout its
GEMM wants: forward Y^T = W X^T, weight gradient dZ^T X, input gradient W^T dZ^T (only the small
W^T is copied, in the forward). The input may be feature-major too (a [batch, in] view of a
contiguous [in, batch] tensor, as the dot interaction returns it): it is read in place, and its
first GEMMs run faster than on a row-major [batch, 52]. The bias and ReLU then run as one
in-place pass (`_add_relu_`) instead of a GEMM epilogue, and the ReLU output doubles as its
backward mask. The numerics are fp32 GEMMs as on the plain path (only the summation order,
hence float rounding, differs). Anything unusual (other devices or dtypes, autocast,
torch.compile tracing, dispatch modes such as FlopCounterMode, hooks on the layers, oneDNN
missing) takes the plain module path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from recstack.models.init import init_linear

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_NARROW = 16  # first-layer inputs narrower than this are zero-padded to it (see _FeatureMajorMLP.forward)


def _mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T by oneDNN; `a` should be row-major (else oneDNN copies it), `b` may be any 2-D view."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


class _FeatureMajorMLP(torch.autograd.Function):
    """Linear(+ReLU) layers on a 2-D [batch, in] input, computed feature-major (see module doc).

    Inputs: x, the per-layer ReLU flags, then weight and bias of each layer. Returns the last
    layer's output as a [batch, out] view of its feature-major [out, batch] result.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, relus: tuple[bool, ...], *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k = x.shape[1]
        if k < _NARROW:
            # A narrow input (DLRM's 13 dense features) runs oneDNN's GEMM at half speed; zero
            # columns in both operands make it 16 wide with the same products and sums. Stored
            # feature-major, like a hidden layer's output: both its GEMMs read it faster so.
            xt = x.new_zeros(_NARROW, x.shape[0])
            xt[:k].copy_(x.t())
            x = xt.t()
        elif not (x.is_contiguous() or x.t().is_contiguous()):
            x = x.contiguous()
        # x: [batch, in], row-major or a view of a feature-major [in, batch] tensor (the dot
        # interaction's output, a padded input); a GEMM's right operand may be either.
        h = x  # layer input: [batch, in] for the first layer, feature-major [in, batch] after
        outs: list[torch.Tensor] = []
        for i, relu in enumerate(relus):
            w, b = params[2 * i], params[2 * i + 1]
            if i > 0 and w.shape[0] == 1:  # a logit layer: a GEMV, which oneDNN's GEMM runs at half speed
                y = torch.mm(w, h)
            elif i == 0 and k < _NARROW:
                y = _mm_nt(torch.nn.functional.pad(w, (0, _NARROW - k)), h)
            else:
                y = _mm_nt(w, h if i == 0 else h.t())  # [out, batch] = W @ H^T
            if b is not None:
                if relu:
                    torch.ops.aten._add_relu_(y, b[:, None])
                else:
                    y.add_(b[:, None])
            elif relu:
                y.relu_()
            outs.append(y)
            h = y
        # W^T for the input gradients, copied at the end of the forward while the weights are in
        # cache from their GEMMs (perf: the same transposed copy in the backward reads a cold W,
        # 2-3x slower); one-output layers and a first layer whose input needs no gradient keep W.
        training = any(ctx.needs_input_grad)
        wts = [
            w if not training or w.shape[0] == 1 or (i == 0 and not ctx.needs_input_grad[0]) else w.t().contiguous()
            for i, w in enumerate(params[0::2])
        ]
        ctx.relus = relus
        ctx.outer = [w.shape[0] == 1 for w in params[0::2]]
        ctx.in_width = k
        ctx.has_bias = [params[2 * i + 1] is not None for i in range(len(relus))]
        # Inputs of layers 1.. are outputs of layers 0..; the last output is kept only as a ReLU mask.
        keep_last = outs[-1] if relus[-1] else None
        ctx.save_for_backward(x, *outs[:-1], keep_last, *wts)
        return outs[-1].t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        n = len(ctx.relus)
        saved = ctx.saved_tensors
        x, hidden, last, weights = saved[0], saved[1:n], saved[n], saved[n + 1:]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gt = g.t().contiguous()  # [out, batch]; always a fresh copy unless the last layer is 1 wide
        if gt.data_ptr() == g.data_ptr():
            gt = gt.clone()  # updated in place below: never write into autograd's incoming gradient
        for i in range(n - 1, -1, -1):
            y = last if i == n - 1 else hidden[i]
            if ctx.relus[i]:
                # relu(z) > 0 exactly where z > 0; in place: gt is ours (fresh from a GEMM or copy)
                torch.ops.aten.threshold_backward.grad_input(gt, y, 0, grad_input=gt)
            if ctx.needs_input_grad[2 + 2 * i]:
                grads[2 * i] = _mm_nt(gt, x.t() if i == 0 else hidden[i - 1])  # dW = dZ^T X
                if i == 0 and x.shape[1] != ctx.in_width:  # drop the zero padding's columns
                    grads[0] = grads[0][:, : ctx.in_width].contiguous()
            if ctx.has_bias[i] and ctx.needs_input_grad[3 + 2 * i]:
                grads[2 * i + 1] = gt.sum(1)
            if i > 0 or ctx.needs_input_grad[0]:  # skipped for the first layer on dense inputs
                w = weights[i]  # W^T, or W for a one-output layer
                if ctx.outer[i]:  # one output (a logit): dX^T is the outer product W^T dZ^T, no GEMM needed
                    gt = w.t() * gt
                else:
                    gt = _mm_nt(w, gt.t())  # dX^T = W^T dZ^T
        gx = gt.t() if ctx.needs_input_grad[0] else None
        return gx, None, *grads


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
        relus = tuple(act == "relu" for _, act in self._plan)
        params: list[torch.Tensor | None] = []
        for idx, _ in self._plan:
            lin = self.layers[idx]
            params += [lin.weight, lin.bias]
        h = _FeatureMajorMLP.apply(h, relus, *params)
        if self._plan[-1][1] == "sigmoid":
            h = torch.sigmoid(h)
        return h if lead is None else h.reshape(*lead, h.shape[-1])
