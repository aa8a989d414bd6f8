"""The trainer: one model (or one rank's part of it), its optimisers, the step and evaluation.

`Trainer.step(batch)` is the whole training step (forward, loss, backward, optimiser updates)
with no host synchronisation, so benchmarks can time it without data loading. `fit` adds the
data loop, logging, evaluation and the run directory.

Multi-process (hybrid-parallel) runs use the same class: each rank owns the tables that
`place_tables` gives it and a DDP-wrapped copy of the dense part; see dist.py.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import Batch, SparseBatch
from recstack.data.store import Store
from recstack.errors import ConfigError, DataError
from recstack.spec import ModelSpec, TrainSpec
from recstack.train.cpu_alloc import keep_freed_memory
from recstack.train.dist import DistInfo, Exchange, place_tables, slice_sizes
from recstack.train.metrics import binary_metrics
from recstack.train.optim import DenseOptimizer, sparse_optimizer
from recstack.train.schedule import lr_at
from recstack.ui import short_list

FBGEMM_OPT = {"sgd": "sgd", "adagrad": "rowwise_adagrad"}


@dataclass
class StepInput:
    """What one rank needs for one step: its sample slice (dense, labels) and its tables' ids
    for the whole global batch (single process: everything)."""

    dense: torch.Tensor
    sparse: SparseBatch
    labels: torch.Tensor
    global_batch: int


class _DenseStage(nn.Module):
    """The dense part as a module of its own, so DDP sees (and reduces) only dense parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        return self.model.dense_forward(dense, pooled)


def build_model_for(spec: ModelSpec, ts: TrainSpec, backend: str = "torch", device: str = "cpu",
                    table_ids: list[int] | None = None) -> nn.Module:
    """The model for training, seeded by ts.seed, with only `table_ids` in its embeddings if given.

    The fbgemm backend gets the run's optimiser for its fused embedding update (ts.optimizer,
    starting at the scheduled rate). A rank's model holds only its own tables; table init is
    seeded per global index, so they equal the full model's tables.
    """
    from recstack.models import FAMILIES, EmbeddingBagCollection, build_model
    from recstack.models.init import dense_generator

    kw: dict[str, Any] = {}
    if backend == "fbgemm":
        kw = {"fbgemm_optimizer": FBGEMM_OPT[ts.optimizer], "learning_rate": lr_at(0, ts),
              "eps": ts.adagrad_eps}
    if table_ids is None or list(table_ids) == list(range(spec.num_tables)):
        return build_model(spec, backend=backend, seed=ts.seed, device=device, **kw)
    # build_model would allocate every table; a rank builds the family with its own collection.
    if spec.family not in FAMILIES:
        raise ConfigError(f"family: unknown model family {spec.family!r}")
    ids = list(table_ids)
    emb = EmbeddingBagCollection([spec.tables[t] for t in ids], backend=backend, seed=ts.seed, table_ids=ids,
                                 device=device, **kw)
    return FAMILIES[spec.family](spec, emb, dense_generator(ts.seed)).to(device)


def _backend_of(model_state: dict[str, Any]) -> str | None:
    """The embedding backend a model state dict was saved from, by its parameter names (None: no
    embeddings, or names of none of the three)."""
    for prefix, backend in (("embeddings._impl.bags.", "torch"), ("embeddings._impl.weights.", "fused"),
                            ("embeddings._impl.tbe.", "fbgemm")):
        if any(k.startswith(prefix) for k in model_state):
            return backend
    return None


class Trainer:
    """Model + optimisers + schedule for one process (one rank of a hybrid-parallel job)."""

    def __init__(
        self,
        spec: ModelSpec,
        ts: TrainSpec,
        backend: str = "torch",
        device: str = "cpu",
        world: DistInfo | None = None,
        plan: dict[str, int] | None = None,
    ) -> None:
        self.spec = spec
        self.ts = ts
        self.backend = backend
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_freed_memory()  # perf: no page faults on every step's activations (cpu_alloc.py)
        self.world = world or DistInfo()
        w = self.world.world_size
        torch.manual_seed(ts.seed)
        self.placement = place_tables(spec.tables, w, plan)
        owners = [[t for t, r in enumerate(self.placement) if r == k] for k in range(w)]
        self.owned = owners[self.world.rank]
        self.model = build_model_for(spec, ts, backend, device, self.owned if w > 1 else None)
        self.num_outputs = int(getattr(self.model, "num_outputs", 1))
        self.fused = bool(self.model.fused_optimizer)
        self.dense_opt = DenseOptimizer(self.model.dense_parameters(), ts)
        self.sparse_opt = None if self.fused else sparse_optimizer(self.model.sparse_parameters(), ts)
        self.exchange: Exchange | None = None
        self.ddp: nn.Module | None = None
        if w > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            stage = _DenseStage(self.model)
            skip = [n for n, _ in stage.named_parameters() if n.startswith("model.embeddings.")]
            skip += [n for n, _ in stage.named_buffers() if n.startswith("model.embeddings.")]
            DDP._set_params_and_buffers_to_ignore_for_model(stage, skip)
            self.ddp = DDP(
                stage, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False, gradient_as_bucket_view=True,
            )
            # A group of its own for the all-to-all, so it never queues behind DDP's all-reduces.
            group = dist.new_group(list(range(w)))
            self.exchange = Exchange(self.world.rank, w, owners, [t.dim for t in spec.tables], group)
        self.model.train()  # predict() switches to eval and back; step() does not touch the mode
        self.step_count = 0
        self._emb_lr: float | None = lr_at(0, ts) if self.fused else None

    # ------------------------------------------------------------ checkpoint state
    @property
    def owned_names(self) -> list[str]:
        """Names of the tables this rank holds."""
        return [self.spec.tables[t].name for t in self.owned]

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit: weights, optimiser state, step."""
        return {
            "model": self.model.state_dict(),
            "dense_opt": self.dense_opt.state_dict(),
            "sparse_opt": self.sparse_opt.state_dict() if self.sparse_opt is not None else {},
            "step": self.step_count,
            "world_size": self.world.world_size,
            "rank": self.world.rank,
            "backend": self.backend,
            "tables": self.owned_names,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("world_size", 1)) != self.world.world_size or int(state.get("rank", 0)) != self.world.rank:
            raise ConfigError(
                f"checkpoint is of rank {state.get('rank')} of {state.get('world_size')} processes; this is rank "
                f"{self.world.rank} of {self.world.world_size}"
            )
        tables = self.owned_names
        if "tables" in state and list(state["tables"]) != tables:  # same shapes may hide another placement
            raise ConfigError(f"checkpoint holds tables [{short_list(list(state['tables']), 60)}] on rank "
                              f"{self.world.rank}, this run places [{short_list(tables, 60)}] there (use the "
                              "placement of the checkpointed run)")
        written = state.get("backend") or _backend_of(state.get("model", {}))  # older checkpoints: from the keys
        if written is not None and written != self.backend:
            raise ConfigError(f"checkpoint was written with the {written!r} embedding backend, this run uses "
                              f"{self.backend!r} (pass --backend {written} to continue it)")
        try:
            self.model.load_state_dict(state["model"])
            self.dense_opt.load_state_dict(state["dense_opt"])
            if self.sparse_opt is not None:
                self.sparse_opt.load_state_dict(state["sparse_opt"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ConfigError(f"checkpoint does not fit this model and optimiser: {' '.join(str(e).split())}") from None
        self.step_count = int(state["step"])
        if self.fused:
            self._emb_lr = None  # set again from the schedule on the next step

    # ------------------------------------------------------------ inputs
    def prepare(self, batch: Batch) -> StepInput:
        """Cut a global batch down to this rank's share (runs in the loader thread)."""
        b = batch.batch_size
        if self.world.world_size == 1:
            inp = StepInput(batch.dense, batch.sparse, batch.labels, b)
        else:
            sizes = slice_sizes(b, self.world.world_size)
            lo = sum(sizes[: self.world.rank])
            hi = lo + sizes[self.world.rank]
            inp = StepInput(
                batch.dense[lo:hi], batch.sparse.select_tables(self.owned), batch.labels[lo:hi], b
            )
        if self.device.type != "cpu":
            inp = StepInput(
                inp.dense.to(self.device, non_blocking=True), inp.sparse.to(self.device, non_blocking=True),
                inp.labels.to(self.device, non_blocking=True), b,
            )
        return inp

    # ------------------------------------------------------------ forward / step
    def _logits(self, inp: StepInput, train: bool) -> torch.Tensor:
        """The forward pass, in fp32 logits; with `precision: bf16` its dense compute under
        bfloat16 autocast (embedding lookups and the all-to-all stay fp32: autocast leaves them)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.ts.precision == "bf16"):
            return self._forward(inp, train).float()

    def _forward(self, inp: StepInput, train: bool) -> torch.Tensor:
        if self.exchange is None:
            return self.model(inp.dense, inp.sparse)
        w = self.world.world_size
        sizes = slice_sizes(inp.global_batch, w)
        pooled = self.model.embeddings(inp.sparse) if self.owned else []
        # Embedding gradients arrive summed over the ranks' losses, each of which is scaled up by
        # world_size (see _loss); 1/world_size makes them the single-process gradients.
        full = self.exchange(pooled, sizes, 1.0 / w)
        if train:
            assert self.ddp is not None
            return self.ddp(inp.dense, full)
        return self.model.dense_forward(inp.dense, full)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, global_batch: int) -> torch.Tensor:
        labels = labels.reshape(logits.shape)
        if self.exchange is None:
            return F.binary_cross_entropy_with_logits(logits, labels)
        # Local sum / global count, times world_size: DDP's average over ranks then gives the
        # global-batch mean, whatever the (possibly uneven) slice sizes.
        per = max(1, logits.numel() // max(1, logits.shape[0]))
        s = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return s * (self.world.world_size / (global_batch * per))

    def step(self, batch: Batch | StepInput) -> torch.Tensor:
        """One training step; returns the (detached) loss tensor without synchronising.

        In a multi-process run the returned value is this rank's contribution; the global loss
        is the sum over ranks divided by world_size (`fit` does that at log time).
        """
        inp = batch if isinstance(batch, StepInput) else self.prepare(batch)
        lr = lr_at(self.step_count, self.ts)
        if self.fused and lr != self._emb_lr:
            self.model.embeddings.set_learning_rate(lr)
            self._emb_lr = lr
        logits = self._logits(inp, train=True)
        loss = self._loss(logits, inp.labels, inp.global_batch)
        self.dense_opt.zero_grad()
        if self.sparse_opt is not None:
            self.sparse_opt.zero_grad()
        loss.backward()
        self.dense_opt.step(lr)
        if self.sparse_opt is not None:
            self.sparse_opt.step(lr)
        self.step_count += 1
        return loss.detach()

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(
        self, store: Store, split: str, max_samples: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, logits) over a split (its first `max_samples` samples when given).

        Multi-process: every rank runs the model-parallel forward on its slices and rank 0
        gathers the logits; other ranks return empty arrays.
        """
        lo, hi = store.split_range(split)
        if max_samples is not None:
            hi = min(hi, lo + max_samples)
        bs = self.ts.eval_batch_size
        logits: list[torch.Tensor] = []
        labels: list[np.ndarray] = []
        sizes_all: list[list[int]] = []
        self.model.eval()
        try:
            for inp, batch in prefetch(
                (store.batch(a, min(hi, a + bs)) for a in range(lo, hi, bs)), lambda b: (self.prepare(b), b)
            ):
                logits.append(self._logits(inp, train=False).float().cpu())
                labels.append(batch.labels.numpy())
                sizes_all.append(slice_sizes(batch.batch_size, self.world.world_size))
        finally:
            self.model.train()
        if not logits:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        mine = torch.cat(logits)
        y = np.concatenate(labels)
        if self.exchange is None:
            return y, mine.numpy()
        return y, self._gather_logits(mine, sizes_all)

    def _gather_logits(self, mine: torch.Tensor, sizes_all: list[list[int]]) -> np.ndarray:
        w, r = self.world.world_size, self.world.rank
        counts = [sum(s[k] for s in sizes_all) for k in range(w)]
        width = mine.shape[1:] if mine.dim() > 1 else ()
        pad = torch.zeros((max(counts), *width), dtype=mine.dtype)
        pad[: counts[r]] = mine
        if self.device.type == "cuda":
            pad = pad.to(self.device)
        parts = [torch.empty_like(pad) for _ in range(w)]
        dist.all_gather(parts, pad)
        if r != 0:
            return np.zeros(0, np.float32)
        parts = [p.cpu() for p in parts]
        ptr = [0] * w
        out = []
        for sizes in sizes_all:  # reassemble batch by batch, rank slices in order
            for k in range(w):
                out.append(parts[k][ptr[k] : ptr[k] + sizes[k]])
                ptr[k] += sizes[k]
        return torch.cat(out).numpy()

    def evaluate(self, store: Store, split: str, max_samples: int | None = None) -> dict[str, Any]:
        """AUC, log loss, NE over a split (rank 0 gets the numbers; other ranks an empty dict)."""
        y, z = self.predict(store, split, max_samples)
        if not self.world.is_main:
            return {}
        out: dict[str, Any] = binary_metrics(y, z)
        out["samples"] = int(y.shape[0])
        return out


# ---------------------------------------------------------------- data loop
def train_batches(store: Store, ts: TrainSpec, steps: int, seed: int, start: int = 0) -> Iterator[Batch]:
    """Batches `start`..`steps`-1 of the training stream: shuffled full batches of the train split,
    reshuffled (seed + epoch) every epoch. The stream is a pure function of the seed, so a run
    resumed at step `start` sees exactly the batches the uninterrupted run would have."""
    per_epoch = store.num_batches("train", ts.batch_size, drop_last=True)
    if per_epoch == 0:
        lo, hi = store.split_range("train")
        raise DataError(
            f"{store.path}: train split has {hi - lo} samples, fewer than batch size {ts.batch_size}"
        )
    done, epoch = start, start // per_epoch
    skip = start % per_epoch
    while done < steps:
        for batch in store.batches("train", ts.batch_size, shuffle=True, seed=seed + epoch, drop_last=True,
                                   start=skip):
            yield batch
            done += 1
            if done >= steps:
                return
        epoch += 1
        skip = 0


def prefetch(it: Iterator[Any], fn: Callable[[Any], Any], depth: int = 3) -> Iterator[Any]:
    """Run `fn(item)` for the items of `it` in a background thread, `depth` ahead.

    Batch assembly (memmap gather, id layout) overlaps the training step; errors re-raise here.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(fn(item))
            q.put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    th = threading.Thread(target=work, daemon=True, name="recstack-loader")
    th.start()
    try:
        while True:
            x = q.get()
            if x is end:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def default_eval_every(steps: int) -> int:
    """About ten evaluations per run."""
    return max(1, math.ceil(steps / 10))
