"""Turn a loaded causal LM into what we train: a PEFT LoRA/DoRA model (optionally on a quantized base, with
a PiSSA/CorDA/LoftQ/OLoRA initialisation) or the full model (full, lisa, galore)."""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .quantbase import FORMATS, _linear_names, dequantize_weight, is_quantized, loftq_factors, quantize_model_

RESIDUAL_INITS = ("pissa", "corda", "olora")  # PEFT moves the adapter's components out of the base weights
PEFT_INIT = {"default": True, "pissa": "pissa", "corda": "corda", "olora": "olora", "loftq": True}


def prepare_model(model: nn.Module, cfg: TrainConfig, samples: list | None = None) -> nn.Module:
    """lora/dora: wrap with PEFT (only adapter weights train). full/galore/lisa: every parameter trains (lisa:
    the loop then freezes all but the sampled decoder layers, period by period).

    Call after seeding: LoRA's A matrices are randomly initialised. samples: the training samples (lora.init
    corda takes the covariance of their inputs). train.base_quant: an fp32 model is quantized here, layer by
    layer (the train stage loads it already quantized, see quantbase.load_quantized_base).
    """
    model.config.use_cache = False
    if cfg.method in ("full", "lisa", "galore"):
        for p in model.parameters():
            p.requires_grad_(True)
        model.tunesmith_method = cfg.method
        return model
    from peft import LoraConfig, get_peft_model

    init = cfg.lora.init
    loftq = (cfg.lora.r, cfg.lora.loftq_iters) if init == "loftq" else None
    if cfg.base_quant != "none" and not is_quantized(model):
        quantize_model_(model, cfg.base_quant, cfg.base_quant_group_size, loftq=loftq)
    elif init == "loftq" and cfg.base_quant == "none":
        _loftq_fp32_(model, cfg)
    targets = cfg.lora.target_modules
    if init == "corda" and targets == "all-linear":  # CorDA's preprocessing matches names, not "all-linear"
        targets = sorted({n.rsplit(".", 1)[-1] for n in _linear_names(model)})
    extra = {}
    if init == "corda":
        from peft.tuners.lora.config import CordaConfig

        extra["corda_config"] = CordaConfig(corda_method=cfg.lora.corda_method)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM", use_dora=cfg.method == "dora", init_lora_weights=PEFT_INIT[init],
                      **extra)
    if init == "corda":
        _corda_preprocess(model, lora, cfg, samples)
    peft_model = get_peft_model(model, lora)
    if init == "loftq":
        _set_loftq_adapters(peft_model)
    if init in RESIDUAL_INITS:  # what save_adapter needs to write an adapter for the original base
        peft_model.tunesmith_initial_adapter = {n: p.detach().clone() for n, p in peft_model.named_parameters()
                                                if p.requires_grad}
    peft_model.tunesmith_method = cfg.method
    peft_model.tunesmith_loftq = init == "loftq"
    return peft_model


def _loftq_fp32_(model: nn.Module, cfg: TrainConfig) -> None:
    """lora.init loftq on an fp32 base: each adapted Linear's weight becomes its int4 LoftQ quantization
    (dequantized, kept fp32) and the adapter starts at the rank-r approximation of what quantization lost."""
    for name in _linear_names(model):
        lin = model.get_submodule(name)
        if lin.weight.shape[1] % cfg.base_quant_group_size:
            continue
        quant, left, right = loftq_factors(lin.weight, "int4", cfg.base_quant_group_size, cfg.lora.r,
                                           cfg.lora.loftq_iters)
        with torch.no_grad():
            lin.weight.copy_(dequantize_weight(*quant, FORMATS["int4"], cfg.base_quant_group_size))
        if left is not None:  # None: the weight was on the int4 grid already (default init, see loftq_factors)
            lin.loftq = (left, right)


def _set_loftq_adapters(model: nn.Module) -> None:
    """Set each adapter so that scaling * B @ A = L @ R, the LoftQ factors kept on its base layer."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and hasattr(module.base_layer, "loftq"):
            left, right = module.base_layer.loftq
            for name in module.lora_A:
                root = module.scaling[name] ** 0.5
                with torch.no_grad():
                    module.lora_B[name].weight.copy_(left / root)
                    module.lora_A[name].weight.copy_(right / root)
            del module.base_layer.loftq
    for module in model.modules():  # factors of layers without an adapter
        if hasattr(module, "loftq"):
            del module.loftq


def _corda_preprocess(model: nn.Module, lora, cfg: TrainConfig, samples: list | None) -> None:
    """PEFT's CorDA preprocessing: covariance of every adapted layer's input over the first
    cfg.lora.corda_samples training samples (a forward each, no gradient)."""
    from peft.tuners.lora.corda import preprocess_corda

    from ..errors import UserError

    if not samples:
        raise UserError("train.lora.init corda needs training samples for its covariance (none were given)")
    device = next(model.parameters()).device

    def run_model():
        was = model.training
        model.eval()
        for s in samples[:cfg.lora.corda_samples]:
            ids = s.chosen.input_ids if hasattr(s, "chosen") else s.input_ids
            model(input_ids=torch.tensor([ids], device=device), use_cache=False)
        model.train(was)
    preprocess_corda(model, lora, run_model=run_model)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor for every parameter that trains (what a checkpoint must hold); lisa: every parameter
    (the layers trained in earlier periods are frozen now, but changed).

    Tied weights appear once (named_parameters de-duplicates shared tensors).
    """
    every = getattr(model, "tunesmith_method", None) == "lisa"
    return {name: p for name, p in model.named_parameters() if every or p.requires_grad}


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
    """(trainable, total) parameter counts (a quantized base Linear counts its in * out weights)."""
    from .quantbase import QuantLinear

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return trainable, total
