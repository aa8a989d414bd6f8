"""MLPerf-style learning-rate schedule: linear warm-up, constant, polynomial decay.

Kept as a pure function of the step so that resumed, multi-process and benchmark runs all
agree on the rate without carrying scheduler state around.
"""

from __future__ import annotations

from recstack.spec import TrainSpec


def lr_at(step: int, ts: TrainSpec) -> float:
    """Learning rate for update number `step` (0-based).

    - warm-up (step < warmup_steps): lr * (step + 1) / warmup_steps, so the first update is
      not wasted and update warmup_steps - 1 runs at the full rate;
    - decay (decay_steps > 0 and step >= decay_start, after warm-up): with
      t = min(step - decay_start, decay_steps) / decay_steps,
      lr_end + (lr - lr_end) * (1 - t) ** decay_power, lr_end = lr * end_lr_factor;
      it stays at lr_end after the decay window;
    - otherwise the constant lr.
    """
    base = ts.lr
    if step < ts.warmup_steps:
        return base * (step + 1) / ts.warmup_steps
    if ts.decay_steps > 0 and step >= ts.decay_start:
        t = min(step - ts.decay_start, ts.decay_steps) / ts.decay_steps
        end = base * ts.end_lr_factor
        return end + (base - end) * (1.0 - t) ** ts.decay_power
    return base
