"""Save what training produced: the LoRA adapter, and a merged full model in safetensors that
plain `transformers.AutoModelForCausalLM.from_pretrained` loads without tunesmith."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io import atomic_dir


def state_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the model's tensors (each shared tensor once): the size its safetensors files need, roughly."""
    seen, total = set(), 0
    for t in list(model.parameters()) + ([] if trainable_only else list(model.buffers())):
        if (trainable_only and not t.requires_grad) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def save_adapter(model: nn.Module, out: Path) -> Path | None:
    """Write the PEFT adapter (adapter_config.json + adapter_model.safetensors); None for full tuning."""
    if not hasattr(model, "peft_config"):
        return None
    with atomic_dir(out, need_bytes=state_bytes(model, trainable_only=True)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
    return out


def merged_model(model: nn.Module) -> nn.Module:
    """The plain transformers model with LoRA folded into the base weights (in place)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    return model


def save_merged(model: nn.Module, tokenizer, out: Path) -> Path:
    """Write a merged full model plus tokenizer as a standard Hugging Face directory."""
    with atomic_dir(out, need_bytes=state_bytes(model) + (16 << 20)) as tmp:  # + the tokenizer files
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return out
