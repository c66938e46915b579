"""GaLore (Zhao et al. 2024, "Memory-Efficient LLM Training by Gradient Low-Rank Projection"): AdamW whose
2-D weight gradients are projected to rank r before the moments are updated, so Adam's state is r-sized.

For a weight gradient G [m, n] the projector P comes from an SVD of G, renewed every `update_proj_gap`
steps (as galore-torch's "std" projector): m >= n: P = Vh[:r] [r, n], the low-rank gradient is G P^T
[m, r] and an update N goes back as N P; m < n: P = U[:, :r] [m, r], low rank P^T G [r, n], back P N.
The Adam update of the low-rank gradient is projected back, multiplied by `scale`, and applied with the
learning rate; decoupled weight decay as AdamW. Embeddings, the output layer, norms and biases take plain
AdamW (the same step without projection).

Written here rather than taken from `galore-torch` (PyPI): its optimizer keeps projector objects in the
optimizer state, which `torch.load(weights_only=True)` cannot read back; here every state entry is a tensor,
so checkpoints resume bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def _projector(grad: torch.Tensor, rank: int) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    return (vh[:rank] if grad.shape[0] >= grad.shape[1] else u[:, :rank]).contiguous()


def _down(grad: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    return grad @ proj.t() if grad.shape[0] >= grad.shape[1] else proj.t() @ grad


def _up(low: torch.Tensor, proj: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return low @ proj if shape[0] >= shape[1] else proj @ low


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW; parameter groups with a `rank` take the GaLore projection for their 2-D parameters."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=None,
                                      update_proj_gap=200, scale=1.0))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                n = int(state["step"])
                low_rank = group["rank"] is not None and p.dim() == 2 and group["rank"] < min(p.shape)
                if low_rank:
                    if n % group["update_proj_gap"] == 0:
                        state["proj"] = _projector(grad, group["rank"])
                    grad = _down(grad, state["proj"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                state["step"] += 1
                t = n + 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                step_size = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                update = m / (v.sqrt() + group["eps"])
                if low_rank:
                    update = _up(update, state["proj"], p.shape) * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-step_size)


def build_galore_optimizer(model: nn.Module, cfg: TrainConfig) -> GaLoreAdamW:
    """GaLore for the 2-D weights of the decoder (not the embeddings or the output layer), AdamW for the rest."""
    skip = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    low = [p for p in params if p.dim() == 2 and id(p) not in skip]
    rest = [p for p in params if p.dim() != 2 or id(p) in skip]
    g = cfg.galore
    return GaLoreAdamW([{"params": low, "rank": g.rank, "update_proj_gap": g.update_proj_gap, "scale": g.scale},
                        {"params": rest}], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
