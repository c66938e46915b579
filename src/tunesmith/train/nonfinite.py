"""A step whose loss or gradient norm is not finite (NaN or inf): caught before the optimizer update.

`train.on_nonfinite: stop` (the default) checkpoints the last good state (the weights, optimizer,
scheduler and RNG exactly as they were before the step) and ends with one message naming the step
and its samples (file:line); `skip` drops the step (no optimizer or scheduler update, the gradient
thrown away, the step still consumes its batch so the data order stays a function of (seed, step)),
logs it in metrics.jsonl, and stops as above once `max_consecutive_skips` steps in a row were skipped.

To say which samples are to blame, each sample of the step is run alone through the loss (no
gradient, eval mode: no dropout, no RNG drawn); those whose own loss is not finite are named. When
every sample's loss is finite on its own, the gradient overflowed: the whole step is named.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.packing import pack_rows
from ..errors import UserError

NAMED = 8  # samples named in the message; metrics.jsonl holds them all


class NonFiniteError(UserError):
    """Training stopped at a step whose loss or gradient norm was not finite."""


def is_finite(*values: float | torch.Tensor | None) -> bool:
    """True when every given value (a number or a tensor) is finite; None counts as finite (not measured)."""
    for v in values:
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v).all()):
                return False
        elif not math.isfinite(v):
            return False
    return True


def number(value: float | None) -> float | str | None:
    """A value for metrics.jsonl: non-finite floats as the strings 'nan', 'inf', '-inf' (JSON has no NaN)."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


def alone_losses(loss_module, batch, cfg, device) -> list[float | None]:
    """The loss of each sample of the step on its own (mean over its target tokens), in eval mode and without
    gradient; None for a preference pair (its loss depends on the pair, not checked alone)."""
    from .loop import replay_target_mask  # the loop imports this module

    inner = getattr(loss_module, "module", loss_module)  # the loss itself, not its DDP wrapper
    was_training = inner.training
    inner.eval()
    out: list[float | None] = []
    try:
        with torch.no_grad():
            for sample in batch:
                if not hasattr(sample, "labels") or sample.n_trainable == 0:
                    out.append(None)
                    continue
                row = pack_rows([sample], max(cfg.max_tokens_per_row, len(sample.input_ids)))[0]
                kl = {"kl_mask": replay_target_mask([sample]).to(device)} if cfg.kl_to_base else {}
                loss = inner(row.input_ids.to(device), row.position_ids.to(device), row.targets.to(device), **kl)
                out.append(float(loss) / sample.n_trainable)
    finally:
        inner.train(was_training)
    return out


def culprits(batch, alone: list[float | None]) -> tuple[list[str], bool]:
    """(origins to name, True when they are the samples whose own loss is not finite; False: the whole step)."""
    bad = [s.origin for s, v in zip(batch, alone) if v is not None and not math.isfinite(v)]
    return (bad, True) if bad else ([s.origin for s in batch], False)


def record(step: int, loss: float, grad_norm: float | None, action: str, batch, alone) -> dict:
    """The metrics.jsonl line of a non-finite step (every sample with its own loss)."""
    return {"step": step, "nonfinite": True, "action": action, "loss": number(loss),
            "grad_norm": number(grad_norm),
            "samples": [{"origin": s.origin, "loss_alone": number(v)} for s, v in zip(batch, alone)]}


def stop_message(step: int, loss: float, grad_norm: float | None, batch, alone, saved: Path | None,
                 skipped_in_a_row: int, max_skips: int) -> str:
    """One message: what was not finite, at which step, which samples, what was saved, what to do."""
    names, own = culprits(batch, alone)
    listed = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
    parts = [(f"loss is {loss}", f"loss {loss:.4f}", is_finite(loss))]
    if grad_norm is not None:
        parts.append((f"gradient norm is {grad_norm}", f"gradient norm {grad_norm:.4f}", is_finite(grad_norm)))
    bad = " and ".join(text for text, _, ok in parts if not ok)
    good = ", ".join(text for _, text, ok in parts if ok)
    head = (f"training stopped at step {step}: its {bad}" + (f" ({good})" if good else "")
            + "; caught before the optimizer update, so no weight took it")
    if skipped_in_a_row:
        head += f", after {skipped_in_a_row} skipped steps in a row (train.max_consecutive_skips: {max_skips})"
    where = (f"sample{'s' if len(names) > 1 else ''} whose own loss is not finite: {listed}" if own else
             f"every sample's own loss is finite (the step's gradient overflowed); the step's {len(names)} "
             f"samples: {listed}")
    kept = (f"the state before the step (weights, optimizer, scheduler, RNG) is saved in {saved}" if saved else
            "nothing was saved (no run directory)")
    todo = ("fix or drop those rows, then start again" if own else
            "lower train.lr or set train.grad_clip, then start again")
    todo += "; or continue past the step with --resume --train.on_nonfinite skip"
    return f"{head}.\n{where}.\n{kept}; every sample is listed in metrics.jsonl.\n{todo}"
