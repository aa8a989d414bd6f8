"""Training settings shared by the trainer, the CLI and shipped configs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainSpec(BaseModel):
    """Optimiser, schedule and evaluation settings.

    Schedule (MLPerf style): linear warm-up over `warmup_steps`, constant, then polynomial
    decay of power `decay_power` from `decay_start` over `decay_steps` down to `lr * end_lr_factor`.
    Embeddings use sparse gradients with the same optimiser family (`sgd` -> sparse SGD,
    `adagrad` -> row-wise sparse Adagrad).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    optimizer: Literal["sgd", "adagrad"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=128, gt=0)
    steps: int | None = Field(default=None, gt=0, description="None: one epoch of the train split")
    warmup_steps: int = Field(default=0, ge=0)
    decay_start: int = Field(default=0, ge=0)
    decay_steps: int = Field(default=0, ge=0)
    decay_power: float = Field(default=2.0, gt=0)
    end_lr_factor: float = Field(default=0.0, ge=0, le=1)
    adagrad_eps: float = Field(default=1e-8, gt=0)
    eval_every: int | None = Field(default=None, gt=0, description="steps between evaluations")
    eval_batch_size: int = Field(default=4096, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="bf16: the dense compute (MLPs, interaction) runs under bfloat16 autocast; weights, "
                    "embeddings, optimiser state and the loss stay fp32",
    )
