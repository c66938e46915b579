"""Turn a loaded causal LM into what we train: a PEFT LoRA model or the full model."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """LoRA: wrap with PEFT (only adapter weights train). Full: every parameter trains.

    Call after seeding: LoRA's A matrices are randomly initialised.
    """
    model.config.use_cache = False
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor for every parameter that trains (what a checkpoint must hold).

    Tied weights appear once (named_parameters de-duplicates shared tensors).
    """
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy checkpointed trainable weights back into the model, insisting that every name matches."""
    params = trainable_state(model)
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
