"""Save what training produced: the LoRA adapter, and a merged full model in safetensors that
plain `transformers.AutoModelForCausalLM.from_pretrained` loads without tunesmith."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from torch import nn


def _atomic_dir(out: Path):
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def save_adapter(model: nn.Module, out: Path) -> Path | None:
    """Write the PEFT adapter (adapter_config.json + adapter_model.safetensors); None for full tuning."""
    if not hasattr(model, "peft_config"):
        return None
    tmp = _atomic_dir(out)
    model.save_pretrained(str(tmp), safe_serialization=True)
    return _publish(tmp, out)


def merged_model(model: nn.Module) -> nn.Module:
    """The plain transformers model with LoRA folded into the base weights (in place)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.config.use_cache = True
    return model


def save_merged(model: nn.Module, tokenizer, out: Path) -> Path:
    """Write a merged full model plus tokenizer as a standard Hugging Face directory."""
    tmp = _atomic_dir(out)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    return _publish(tmp, out)
