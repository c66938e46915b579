"""The train stage: wrap the model for the method, run the training loop (with evaluation during
training and the best checkpoint when asked), then save the adapter and the merged model."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch

from .. import ui
from ..errors import UserError
from ..export.merge import merged_model, save_adapter, save_merged
from ..train.checkpoint import latest_checkpoint, load_checkpoint
from ..train.config import TrainConfig
from ..train.distributed import DistInfo
from ..train.loop import TrainResult, total_steps, train
from ..train.setup import count_parameters, load_trainable_state, prepare_model, trainable_state
from ..train.tracking import BestTracker
from .data import DataBundle


def setup_model(model, cfg: TrainConfig, samples: list | None = None):
    """Seed (LoRA initialisation is part of the reproducible run), then wrap for the method (samples: the
    training samples, for lora.init corda's covariance)."""
    torch.manual_seed(cfg.seed)
    return prepare_model(model, cfg, samples)


def load_base(model_cfg, cfg: TrainConfig, log=ui.log, load=None):
    """The base model to train: with train.base_quant, read with its Linear weights quantized as they are
    loaded (the fp32 model never whole in memory, quantbase.load_quantized_base); otherwise as configured,
    by `load(model_cfg, log=...)` (default: models.load_configured_model)."""
    from ..models import load_configured_model, local_model_dir
    from ..qformat import is_quantized_dir
    from ..train.quantbase import load_quantized_base

    load = load or load_configured_model
    if cfg.base_quant == "none":
        return load(model_cfg, log=log)
    path = local_model_dir(model_cfg.name, log=log)
    if is_quantized_dir(path) or model_cfg.trust_remote_code:  # quantized in place by prepare_model instead
        return load(model_cfg, log=log)
    loftq = (cfg.lora.r, cfg.lora.loftq_iters) if cfg.lora.init == "loftq" else None
    log(f"loading the base with its Linear layers quantized to {cfg.base_quant} (train.base_quant)")
    return load_quantized_base(path, cfg.base_quant, cfg.base_quant_group_size, loftq=loftq, log=log)


def method_label(cfg: TrainConfig) -> str:
    """The method as the summary and the model card show it (e.g. 'lora (int4 base, init loftq)')."""
    extra = [f"{cfg.base_quant} base" if cfg.base_quant != "none" else "",
             f"init {cfg.lora.init}" if cfg.method in ("lora", "dora") and cfg.lora.init != "default" else "",
             f"neftune {cfg.neftune_alpha:g}" if cfg.neftune_alpha else "",
             f"{cfg.lisa.layers} layers / {cfg.lisa.period} steps" if cfg.method == "lisa" else "",
             f"rank {cfg.galore.rank}" if cfg.method == "galore" else ""]
    extra = [e for e in extra if e]
    label = cfg.method + (f" ({', '.join(extra)})" if extra else "")
    return label if cfg.objective == "sft" else f"{label}, dpo ({cfg.dpo.loss})"


def merged_into(cfg: TrainConfig) -> str | None:
    """What the merged model was merged into, when that is not the original base weights."""
    if cfg.base_quant != "none":
        return (f"the dequantized {cfg.base_quant} base (the weights the adapter was trained against), not the "
                "original full-precision weights")
    if cfg.lora.init == "loftq" and cfg.method == "lora":
        return "the LoftQ int4-quantized base (dequantized), not the original full-precision weights"
    return None


def fit(model, data: DataBundle, cfg: TrainConfig, run_dir: Path, resume: bool, info: DistInfo,
        evaluate: Callable[[int], dict[str, float]] | None = None, eval_every: int = 0,
        best: BestTracker | None = None) -> TrainResult:
    """Train with one progress bar on rank 0 (steps, loss, tokens/s, ETA; dpo: reward accuracy).

    train.objective dpo trains on data.train_pairs (the data must have been tokenized as pairs)."""
    dpo = cfg.objective == "dpo"
    samples = data.train_pairs if dpo else data.train_samples
    if dpo and samples is None:
        raise UserError("train.objective: dpo needs the data tokenized as preference pairs (prepare_data with "
                        "objective='dpo')")
    trainable, total = count_parameters(model)
    n_steps = total_steps(len(samples), cfg)
    if info.is_main:
        what = f"dpo ({cfg.dpo.loss}, beta {cfg.dpo.beta}) on {len(samples)} pairs" if dpo else \
            f"{len(samples)} samples"
        ui.log(f"training {cfg.method}: {trainable:,} of {total:,} parameters, "
               f"{what}, {n_steps} steps of {cfg.batch_size}")
    latest = latest_checkpoint(run_dir / "checkpoints") if resume else None
    start = int(latest.name.split("-")[1]) if latest else 0
    with ExitStack() as stack:
        on_step = None
        if info.is_main:
            advance = stack.enter_context(ui.progress_bar("train", n_steps, "steps", completed=start))
            on_step = lambda step, n, rec: advance(1, extra=_progress_text(rec))  # noqa: E731
        result = train(model, samples, cfg, run_dir, resume=resume, dist_info=info, progress=on_step,
                       evaluate=evaluate, eval_every=eval_every, best=best)
    if result.resumed_from and info.is_main:
        ui.log(f"resumed from step {result.resumed_from}")
    return result


def unsharded(model, load_base: Callable[[], Any], cfg: TrainConfig, info: DistInfo):
    """After training with train.distributed fsdp on several ranks: the trained weights gathered whole (every
    rank takes part) into a plain model on rank 0 (the base loaded again, wrapped for the method), which is
    what saving, merging and evaluating need. Other ranks get None. Anything else: the model as it is."""
    from ..train import fsdp

    if cfg.distributed != "fsdp" or info.world_size == 1:
        return model
    full = fsdp.full_trainable_state(model)
    if not info.is_main:
        return None
    plain = setup_model(load_base(), cfg)
    names = set(trainable_state(plain))
    load_trainable_state(plain, {k: v for k, v in full.items() if k in names})
    return plain


def _progress_text(rec: dict[str, Any]) -> str:
    if rec.get("nonfinite"):
        return f"step {rec['step']} skipped (loss {rec['loss']})"
    acc = f"  acc {rec['reward_accuracy']:.2f}" if "reward_accuracy" in rec else ""
    return f"loss {rec['loss']:.4f}{acc}  {rec['tokens_per_s']:.0f} tok/s"


def keep_best(model, best: BestTracker | None, keep: bool, run_dir: Path) -> dict[str, Any] | None:
    """With a best metric and keep: load the best checkpoint's weights before saving.

    Returns what was kept and why (it goes into the summary)."""
    if best is None or best.step is None:
        return None
    last = best.history[-1] if best.history else None
    why = {"metric": best.metric, "best_step": best.step, "best_value": best.value,
           "last_step": last["step"] if last else None, "last_value": last["value"] if last else None,
           "direction": "lower is better" if best.lower else "higher is better", "history": best.history}
    if not keep or last is None or best.step == last["step"]:
        why["kept_step"] = last["step"] if last else best.step
        why["reason"] = "the last evaluated step is the best" if last and best.step == last["step"] else \
            "eval.keep_best is off: the last step is kept"
        return why
    path = run_dir / "checkpoints" / f"step-{best.step:06d}"
    weights, _, _ = load_checkpoint(path)
    if weights is None:  # a sharded (fsdp) checkpoint, read into this one process
        from ..train.fsdp import read_sharded

        read_sharded(path / "dcp", model)
    else:
        load_trainable_state(model, weights)
    why["kept_step"] = best.step
    why["reason"] = (f"{best.metric} was best at step {best.step} ({best.value:.4f}) vs {last['value']:.4f} at the "
                     f"last evaluation (step {last['step']})")
    ui.log(f"keeping checkpoint step {best.step}: {why['reason']}")
    return why


def save(model, tokenizer, run_dir: Path, merge: bool):
    """adapter/ (LoRA runs) and, with merge, model/ (a plain transformers directory).

    Returns (adapter dir or None, merged model dir or None, the merged model for evaluation)."""
    adapter_dir = save_adapter(model, run_dir / "adapter")
    model = merged_model(model)
    model_dir = save_merged(model, tokenizer, run_dir / "model") if merge else None
    return adapter_dir, model_dir, model
