"""Save what training produced: the LoRA adapter, and a merged full model in safetensors that
plain `transformers.AutoModelForCausalLM.from_pretrained` loads without tunesmith.

Adapters whose initialisation moved components out of the base (train.lora.init pissa, corda, olora:
the frozen base is W - B0 A0) are written for the ORIGINAL base, as PEFT's
`path_initial_model_for_weight_conversion` does: the rank-2r adapter [A; A0], [B, -B0] with twice the
alpha (same scaling) adds B A - B0 A0, which on W gives exactly the tuned weights. The merged model
needs no conversion (the residual base plus B A is the tuned weight).

A run on a quantized base (train.base_quant) is merged into the DEQUANTIZED base (the weights it trained
against); its adapter applies to that dequantized base, and `tunesmith_base.json` in the adapter folder
says so. lora.init loftq is the same: its base is the LoftQ-quantized weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_dir, write_json
from ..train.quantbase import QuantLinear, dequantize_model_

BASE_NOTE = "tunesmith_base.json"


def state_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    """Bytes of the model's tensors (each shared tensor once): the size its safetensors files need, roughly."""
    seen, total = set(), 0
    for t in list(model.parameters()) + ([] if trainable_only else list(model.buffers())):
        if (trainable_only and not t.requires_grad) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def base_note(model: nn.Module) -> dict | None:
    """What the adapter's base is, when it is not the original weights (quantized base or LoftQ)."""
    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]
    cfg = getattr(model, "peft_config", {}).get("default")
    loftq = getattr(model, "tunesmith_loftq", False)
    if not quant and not loftq:
        return None
    what = f"{quant[0].method} quantized" if quant else "LoftQ int4-quantized (kept fp32)"
    return {"base": what, "layers": len(quant), "group_size": quant[0].group_size if quant else None,
            "r": getattr(cfg, "r", None),
            "note": f"this adapter was trained on the {what} base: apply it to that base dequantized (the merged "
                    "model in model/ is exactly that), not to the original full-precision weights"}


def _to_original_base(folder: Path, initial: dict[str, torch.Tensor]) -> None:
    """Rewrite a saved residual-initialised adapter (pissa/corda/olora) for the original base weights."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    init = {k.replace(".default.", "."): v for k, v in initial.items()}
    out = {}
    for key, t in weights.items():
        if ".lora_A." in key:
            out[key] = torch.cat([t, init[key]], dim=0)  # [2r, in]
        elif ".lora_B." in key:
            out[key] = torch.cat([t, -init[key]], dim=1)  # [out, 2r]
        else:
            out[key] = t
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(r=2 * cfg["r"], lora_alpha=2 * cfg["lora_alpha"], init_lora_weights=True, corda_config=None,
               rank_pattern={k: 2 * v for k, v in (cfg.get("rank_pattern") or {}).items()},
               alpha_pattern={k: 2 * v for k, v in (cfg.get("alpha_pattern") or {}).items()})
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))


def save_adapter(model: nn.Module, out: Path) -> Path | None:
    """Write the PEFT adapter (adapter_config.json + adapter_model.safetensors); None for full tuning.

    A residual initialisation (pissa/corda/olora) is converted for the original base; a quantized-base
    or LoftQ adapter gets tunesmith_base.json naming its base."""
    if not hasattr(model, "peft_config"):
        return None
    initial = getattr(model, "tunesmith_initial_adapter", None)
    need = state_bytes(model, trainable_only=True) * (2 if initial else 1)
    with atomic_dir(out, need_bytes=need) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if initial:
            _to_original_base(tmp, initial)
        note = base_note(model)
        if note:
            write_json(tmp / BASE_NOTE, note)
    return out


def merged_model(model: nn.Module) -> nn.Module:
    """The plain transformers model with LoRA folded into the base weights (in place); a quantized base
    is dequantized first (the merge goes into the weights the adapter was trained against)."""
    dequantize_model_(model)
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
