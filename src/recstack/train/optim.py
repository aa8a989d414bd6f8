"""Optimisers: dense ones from torch for the MLPs, lean sparse ones for embedding tables.

Embedding gradients are sparse COO tensors (rows touched by the batch); the optimisers here
update only those rows. The learning rate is passed to `step` so that the schedule stays a
pure function of the step (see schedule.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim import optimizer as torch_optimizer

from recstack.spec import TrainSpec


class SparseSGD:
    """Plain SGD that scatters sparse row gradients into the rows they touch (no coalesce needed)."""

    def __init__(self, params: Iterable[torch.Tensor]):
        self.params = [p for p in params]
        self._scratch: dict[int, torch.Tensor] = {}

    def _scaled(self, p: torch.Tensor, vals: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha * vals in a per-parameter buffer that grows as needed and is reused."""
        buf = self._scratch.get(id(p))
        if buf is None or buf.numel() < vals.numel() or buf.dtype != vals.dtype:
            buf = self._scratch[id(p)] = torch.empty(vals.numel(), dtype=vals.dtype, device=vals.device)
        return torch.mul(vals, alpha, out=buf[: vals.numel()].view(vals.shape))

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                idx, vals = g._indices()[0], g._values()
                if p.device.type == "cpu" and p.dim() == 2:
                    # CPU (perf): index_add_ with alpha != 1 takes a slow per-row path (5x slower on
                    # cold 1M-row tables); scatter_add_ of pre-scaled rows over the row-broadcast
                    # index is one tight loop, exact with duplicate rows, about 1 ms for the 16k
                    # rows of a DLRM benchmark batch. The scaled rows go to a buffer kept across
                    # steps: a fresh one (B x lookups x dim floats) costs first-touch page faults
                    # that dominated the step of high-pooling models (rmc2).
                    p.scatter_add_(0, idx.unsqueeze(1).expand(-1, p.shape[1]), self._scaled(p, vals, -lr))
                else:
                    p.index_add_(0, idx, vals, alpha=-lr)
            else:
                p.add_(g, alpha=-lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:  # stateless
        pass


class RowWiseAdagrad:
    """Row-wise Adagrad: one accumulator per embedding row (mean of the squared row gradient).

    This is the variant DLRM trainers use for tables: the same adaptivity as Adagrad at 1/dim of
    its optimiser memory. Sparse gradients are coalesced so duplicate rows are summed first.
    """

    def __init__(self, params: Iterable[torch.Tensor], eps: float = 1e-8):
        self.params = [p for p in params]
        self.eps = eps
        self.state = [torch.zeros(p.shape[0], dtype=torch.float32, device=p.device) for p in self.params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        for p, acc in zip(self.params, self.state):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse and g._values().shape[0] < p.shape[0] // 2:
                # Few rows touched: merge duplicates (coalesce sorts) and update those rows only.
                g = g.coalesce()
                idx, v = g.indices()[0], g.values()
                s = acc.index_select(0, idx) + v.pow(2).mean(1)
                acc.index_copy_(0, idx, s)
                p.index_add_(0, idx, v / (s.sqrt() + self.eps).unsqueeze(1) * -lr)  # alpha=1: fast path
                continue
            if g.is_sparse:
                # Small table: scattering into a dense gradient is cheaper than sorting; rows the
                # batch did not touch get a zero gradient, hence no change, as in the sparse path.
                g = torch.zeros_like(p).index_add_(0, g._indices()[0], g._values())
            acc.add_(g.pow(2).mean(1))
            p.addcdiv_(g, (acc.sqrt() + self.eps).unsqueeze(1), value=-lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"state": [s.clone() for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        saved = state["state"]
        if len(saved) != len(self.state) or any(a.shape != b.shape for a, b in zip(saved, self.state)):
            raise ValueError("row-wise Adagrad state does not match the tables")
        for mine, theirs in zip(self.state, saved):
            mine.copy_(theirs)


class DenseOptimizer:
    """torch's SGD or Adagrad over the MLP parameters, with the rate set per step."""

    def __init__(self, params: Iterable[torch.Tensor], ts: TrainSpec):
        params = [p for p in params if p.requires_grad]
        self.params = params
        if not params:
            self.opt = None
        elif ts.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=ts.lr)
        else:
            self.opt = torch.optim.Adagrad(params, lr=ts.lr, eps=ts.adagrad_eps)
        self._lr = ts.lr

    def step(self, lr: float) -> None:
        if self.opt is None:
            return
        if lr != self._lr:
            for g in self.opt.param_groups:
                g["lr"] = lr
            self._lr = lr
        if isinstance(self.opt, torch.optim.SGD) and self._plain_sgd():
            # perf: the update torch's SGD makes on CPU without momentum or decay (p -= lr * g per
            # parameter, the same aten ops under the same profiler label, so traces read alike),
            # minus its per-call bookkeeping (~0.3 ms of a 30 ms DLRM step).
            with torch.no_grad(), torch.autograd.profiler.record_function("Optimizer.step#SGD.step"):
                for p in self.params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
            return
        self.opt.step()

    def _plain_sgd(self) -> bool:
        """Whether torch's SGD.step (self.opt) would only do p -= lr * g: one parameter group, no
        momentum, decay or step hooks, no sparse gradient."""
        assert self.opt is not None
        if len(self.opt.param_groups) != 1:
            return False
        g = self.opt.param_groups[0]
        hooks = (self.opt._optimizer_step_pre_hooks, self.opt._optimizer_step_post_hooks,
                 torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks)
        return bool(
            g["momentum"] == 0 and g["weight_decay"] == 0 and not g["maximize"]
            and not any(hooks) and all(p.grad is None or not p.grad.is_sparse for p in self.params)
        )

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.opt is not None:
            self.opt.load_state_dict(state)
            self._lr = self.opt.param_groups[0]["lr"]


def sparse_optimizer(params: Iterable[torch.Tensor], ts: TrainSpec) -> SparseSGD | RowWiseAdagrad:
    """The embedding optimiser matching `ts.optimizer` (sgd -> sparse SGD, adagrad -> row-wise)."""
    if ts.optimizer == "sgd":
        return SparseSGD(params)
    return RowWiseAdagrad(params, eps=ts.adagrad_eps)
