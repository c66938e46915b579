"""Weight-space blends of models that share one architecture: uniform and greedy soups (Wortsman
et al. 2022) and WiSE-FT interpolation between a base and a tuned model (Wortsman et al. 2022b).

Blending is done on state dicts. Every input must have the same tensor names and shapes (and the
same architecture); the first tensor that differs is named in the error. Averages accumulate in
float64, so a soup of identical models is that model bit for bit, and interpolation uses
`torch.lerp`, which returns the base exactly at alpha 0 and the tuned model exactly at alpha 1.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError


def _config_key(model: nn.Module) -> tuple:
    cfg = model.config
    return (tuple(getattr(cfg, "architectures", None) or ()), getattr(cfg, "model_type", None))


def check_compatible(models: Sequence[nn.Module], names: Sequence[str]) -> None:
    """Refuse models that cannot be blended, naming the first difference (architecture, tensor, shape)."""
    ref, ref_name = models[0], names[0]
    ref_state = ref.state_dict()
    for model, name in zip(models[1:], names[1:]):
        if _config_key(model) != _config_key(ref):
            raise UserError(f"cannot blend {name} with {ref_name}: architecture {_config_key(model)} vs "
                            f"{_config_key(ref)}")
        state = model.state_dict()
        for key in ref_state:
            if key not in state:
                raise UserError(f"cannot blend {name} with {ref_name}: tensor {key} is missing from {name}")
            if state[key].shape != ref_state[key].shape:
                raise UserError(f"cannot blend {name} with {ref_name}: tensor {key} has shape "
                                f"{tuple(state[key].shape)} in {name} and {tuple(ref_state[key].shape)} in {ref_name}")
        extra = [k for k in state if k not in ref_state]  # in the model's own order
        if extra:
            raise UserError(f"cannot blend {name} with {ref_name}: tensor {extra[0]} is only in {name}")


@torch.no_grad()
def uniform_soup(models: Sequence[nn.Module], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The mean of the models' weights (float64 accumulation, cast back to each tensor's dtype)."""
    names = list(names or [f"model {i}" for i in range(len(models))])
    if not models:
        raise UserError("a soup needs at least one model")
    check_compatible(models, names)
    states = [m.state_dict() for m in models]
    out = {}
    for key, ref in states[0].items():
        if not ref.is_floating_point():
            out[key] = ref.clone()
            continue
        total = torch.zeros(ref.shape, dtype=torch.float64)
        for state in states:
            total += state[key].double()
        out[key] = (total / len(states)).to(ref.dtype)
    return out


@torch.no_grad()
def interpolate(base: nn.Module, tuned: nn.Module, alpha: float, names: Sequence[str] = ("base", "tuned")
                ) -> dict[str, torch.Tensor]:
    """WiSE-FT: (1 - alpha) * base + alpha * tuned, per tensor (alpha 0 is base, 1 is tuned, exactly)."""
    check_compatible([base, tuned], names)
    tuned_state = tuned.state_dict()
    return {key: torch.lerp(b, tuned_state[key], alpha) if b.is_floating_point() else b.clone()
            for key, b in base.state_dict().items()}


@dataclass
class GreedySoup:
    """Which ingredients the greedy soup kept, and every score on the way."""

    order: list[str]  # ingredients by their own held-out score, best first
    kept: list[str]
    scores: dict[str, float]  # each ingredient alone
    steps: list[dict[str, Any]] = field(default_factory=list)  # one per candidate: soup score with it, kept?
    state: dict[str, torch.Tensor] | None = None
    score: float | None = None


def greedy_soup(models: Sequence[nn.Module], names: Sequence[str], score: Callable[[nn.Module], float],
                higher_is_better: bool = True, log: Callable[[str], None] = print) -> GreedySoup:
    """Add models in order of their held-out score; keep each only if the soup's score does not drop.

    `score(model)` evaluates a model; candidate soups are loaded into a copy of the first model (the
    ingredients themselves are never changed)."""
    check_compatible(models, names)
    sign = 1.0 if higher_is_better else -1.0
    own = {n: score(m) for m, n in zip(models, names)}
    order = sorted(range(len(models)), key=lambda i: -sign * own[names[i]])
    vessel = copy.deepcopy(models[0])
    kept = [order[0]]
    result = GreedySoup(order=[names[i] for i in order], kept=[names[order[0]]], scores=own,
                        state=uniform_soup([models[order[0]]], [names[order[0]]]), score=own[names[order[0]]])
    log(f"greedy soup: start with {names[order[0]]} ({own[names[order[0]]]:.4f})")
    for i in order[1:]:
        candidate = uniform_soup([models[j] for j in kept + [i]], [names[j] for j in kept + [i]])
        vessel.load_state_dict(candidate)
        value = score(vessel)
        take = sign * value >= sign * result.score
        result.steps.append({"add": names[i], "soup_score": value, "kept": take})
        log(f"greedy soup: + {names[i]} -> {value:.4f} ({'kept' if take else 'dropped'})")
        if take:
            kept.append(i)
            result.kept.append(names[i])
            result.state, result.score = candidate, value
    return result
