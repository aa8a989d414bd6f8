"""The MLP's fast CPU path computes what plain nn.Linear/ReLU layers compute (forward and every gradient)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recstack.models import mlp as mlp_mod
from recstack.models.mlp import MLP

needs_onednn = pytest.mark.skipif(not mlp_mod._ONEDNN, reason="oneDNN linear not available in this torch build")


def _plain(m: MLP) -> nn.Sequential:
    """An independent nn.Sequential of nn.Linear / ReLU / Sigmoid with m's weights."""
    return copy.deepcopy(m.layers)


def _compare(m: MLP, x: torch.Tensor, x_grad: bool = True) -> None:
    m.zero_grad(set_to_none=True)
    ref = _plain(m)
    xa = x.clone().requires_grad_(x_grad)
    xb = x.clone().requires_grad_(x_grad)
    ya, yb = m(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    go = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1))
    ya.backward(go)
    yb.backward(go)
    if x_grad:
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(m.layers.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        assert p.grad.shape == p.shape
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "sizes,kw,shape,x_grad",
    [
        ([13, 512, 256, 64, 16], {}, (512, 13), False),  # DLRM bottom MLP on dense input
        ([52, 512, 256, 1], {"relu_last": False}, (300, 52), True),  # DLRM top MLP, logit out
        ([7, 5, 3], {"sigmoid_last": True}, (4, 6, 7), True),  # 3-D input, sigmoid
        ([9, 4], {}, (1, 9), True),  # one sample, one layer
        ([1, 4, 1, 3], {}, (6, 1), True),  # one-wide input and hidden layer (W^T of one row, outer products)
    ],
)
def test_fast_mlp_matches_plain_layers(sizes, kw, shape, x_grad):
    torch.manual_seed(0)
    m = MLP(sizes, seed_gen=torch.Generator().manual_seed(3), **kw)
    _compare(m, torch.randn(shape), x_grad)


@needs_onednn
def test_fast_path_is_taken_on_cpu_fp32():
    m = MLP([8, 16, 4], seed_gen=torch.Generator().manual_seed(0))
    y = m(torch.randn(5, 8, requires_grad=True))
    assert type(y.grad_fn).__name__.startswith("_FeatureMajorMLP")
    m.fast = False
    assert not type(m(torch.randn(5, 8, requires_grad=True)).grad_fn).__name__.startswith("_FeatureMajorMLP")


def test_non_contiguous_input_and_hooks_fall_back_correctly():
    m = MLP([6, 10, 3], relu_last=False, seed_gen=torch.Generator().manual_seed(0))
    wa = torch.randn(32, 12, requires_grad=True)
    wb = wa.detach().clone().requires_grad_(True)
    ya, yb = m(wa[:, ::2]), _plain(m)(wb[:, ::2])  # strided (non-contiguous) input
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-5, atol=1e-5)
    seen = []
    m.layers[0].register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    _compare(m, torch.randn(8, 6))  # a hook on a layer: the module path runs and the hook fires
    assert seen


@needs_onednn
def test_feature_major_input_is_read_in_place_and_matches_row_major():
    """A [B, k] view of a contiguous [k, B] tensor (the dot interaction's output) needs no copy;
    values and gradients equal those of the same input stored row-major."""
    m = MLP([52, 64, 8, 1], relu_last=False, seed_gen=torch.Generator().manual_seed(0))
    base = torch.randn(52, 40)
    _compare(m, base.t())  # against plain layers
    fm = base.clone().requires_grad_(True)
    rm = base.t().contiguous().requires_grad_(True)
    ya, yb = m(fm.t()), m(rm)
    assert torch.equal(ya, yb)
    saved_x = ya.grad_fn.saved_tensors[0]  # the first layer's input, kept for its weight gradient
    assert saved_x.data_ptr() == fm.data_ptr()  # the caller's storage: no row-major copy was made
    ya.sum().backward()
    yb.sum().backward()
    assert torch.equal(fm.grad.t(), rm.grad)


def test_layout_of_parameters_is_unchanged():
    m = MLP([13, 32, 16], sigmoid_last=True)
    assert list(m.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    assert isinstance(m.layers[3], nn.Sigmoid)


def test_no_grad_and_eval():
    m = MLP([13, 64, 8], seed_gen=torch.Generator().manual_seed(0)).eval()
    x = torch.randn(16, 13)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _plain(m)(x), rtol=1e-5, atol=1e-5)
