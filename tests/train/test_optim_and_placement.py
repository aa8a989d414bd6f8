"""Sparse optimisers against their dense definitions; table placement and batch slicing."""

from __future__ import annotations

import pytest
import torch

from recstack.errors import ConfigError
from recstack.spec import TableSpec
from recstack.train import place_tables
from recstack.train.dist import load_plan, slice_sizes
from recstack.train.optim import RowWiseAdagrad, SparseSGD


def _grads(sparse: bool, rows: int):
    torch.manual_seed(0)
    w = torch.randn(rows, 3, requires_grad=True)
    bag = torch.nn.functional.embedding_bag
    idx = torch.tensor([1, 4, 4, 7, 1, 2])
    off = torch.tensor([0, 2, 4])
    bag(idx, w, off, mode="sum", sparse=sparse).pow(2).sum().backward()
    return w


@pytest.mark.parametrize("rows", [10, 100])  # 10: small-table (densified) path; 100: coalesced rows
@pytest.mark.parametrize("cls", [SparseSGD, RowWiseAdagrad])
def test_sparse_update_equals_dense_update(cls, rows):
    ws, wd = _grads(True, rows), _grads(False, rows)
    assert ws.grad.is_sparse and not wd.grad.is_sparse
    os_, od = cls([ws]), cls([wd])
    for _ in range(2):  # second step exercises the Adagrad accumulator
        os_.step(0.1)
        od.step(0.1)
    torch.testing.assert_close(ws.detach(), wd.detach(), rtol=1e-6, atol=1e-7)
    untouched = [r for r in range(rows) if r not in (1, 2, 4, 7)]
    torch.testing.assert_close(ws.detach()[untouched], _grads(False, rows).detach()[untouched])


@pytest.mark.parametrize("momentum", [0.0, 0.9])  # 0: recstack's lean step; 0.9: torch's SGD.step
def test_dense_sgd_equals_torch_sgd(momentum):
    from recstack.spec import TrainSpec
    from recstack.train.optim import DenseOptimizer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    twin.load_state_dict(net.state_dict())
    ours = DenseOptimizer(net.parameters(), TrainSpec(optimizer="sgd", lr=0.1))
    if momentum:
        ours.opt.param_groups[0]["momentum"] = momentum
    assert ours._plain_sgd() == (momentum == 0)  # which of the two paths the steps below take
    theirs = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=momentum)
    x = torch.randn(8, 5)
    for step in range(3):
        lr = 0.1 / (step + 1)
        for g in theirs.param_groups:
            g["lr"] = lr
        for m, opt in ((net, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
        net[0].bias.grad = None  # a parameter without a gradient this step is left alone
        twin[0].bias.grad = None
        ours.step(lr)
        theirs.step()
        for p, q in zip(net.parameters(), twin.parameters()):
            assert torch.equal(p, q)
    ours.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_dense_sgd_runs_step_hooks():
    """A registered optimizer step hook (here a global one) sends the step through torch's SGD."""
    from recstack.spec import TrainSpec
    from recstack.train.optim import DenseOptimizer

    lin = torch.nn.Linear(3, 2)
    opt = DenseOptimizer(lin.parameters(), TrainSpec(optimizer="sgd", lr=0.1))
    calls = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda o, a, k: calls.append(o))
    try:
        lin(torch.ones(1, 3)).sum().backward()
        before = lin.weight.detach().clone()
        opt.step(0.1)
    finally:
        handle.remove()
    assert calls == [opt.opt]
    torch.testing.assert_close(lin.weight.detach(), before - 0.1 * lin.weight.grad)


def test_rowwise_adagrad_formula():
    w = torch.zeros(2, 2, requires_grad=True)
    w.grad = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    opt = RowWiseAdagrad([w], eps=0.0)
    opt.step(1.0)
    # row 0: acc = mean(9, 16) = 12.5; update = g / sqrt(12.5); row 1 untouched (0/0 guarded by eps 0 -> nan)
    torch.testing.assert_close(w.detach()[0], -torch.tensor([3.0, 4.0]) / 12.5**0.5)


def _t(name, rows, dim=4, pooling=1.0):
    return TableSpec(name=name, rows=rows, dim=dim, pooling=pooling)


def test_greedy_placement_balances_bytes_times_pooling():
    tables = [_t("a", 100), _t("b", 90), _t("c", 50), _t("d", 40), _t("e", 10, pooling=5)]
    # costs (x 16 bytes): a 100, b 90, c 50, e 50 (10 rows x pooling 5), d 40. Largest first onto the
    # lighter rank: a->0 (100), b->1 (90), c->1 (140), e->0 (150), d->1 (180).
    assert place_tables(tables, 2) == [0, 1, 1, 1, 0]
    assert place_tables(tables, 1) == [0] * 5


def test_explicit_plan_and_errors(tmp_path):
    tables = [_t("a", 100), _t("b", 90), _t("c", 50)]
    assert place_tables(tables, 2, {"a": 1, "b": 1, "c": 1}) == [1, 1, 1]
    assert place_tables(tables, 2, {"a": 1})[0] == 1
    with pytest.raises(ConfigError, match="'zz'"):
        place_tables(tables, 2, {"zz": 0})
    with pytest.raises(ConfigError, match="rank 2"):
        place_tables(tables, 2, {"a": 2})
    p = tmp_path / "plan.json"
    p.write_text('{"placement": {"a": 0, "b": 1}}')
    assert load_plan(p) == {"a": 0, "b": 1}
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="plan.json"):
        load_plan(p)


def test_slice_sizes():
    assert slice_sizes(64, 2) == [32, 32]
    assert slice_sizes(63, 2) == [32, 31]
    assert slice_sizes(2, 3) == [1, 1, 0]
