"""LESS (Xia et al. 2024): select examples whose LoRA gradients point where the target set's do.

1. Warm up a LoRA adapter on a small random share of the pool (cached by content hash, so a
   rerun reuses it; resumable like any training run).
2. Per-example gradients of the adapter weights, from one batched backward: forward hooks keep
   each LoRA factor's input and tensor hooks catch the gradient at its output, so
   dA_b = gA_b^T x_b and dB_b = gB_b^T a_b for every example b of the batch.
3. Training examples use the Adam update direction the warm-up optimizer would take
   (m / sqrt(v + eps) after folding the gradient into the warm-up's moments); target examples
   use plain gradients, as in the paper.
4. A count-sketch random projection (a fixed random bucket and sign per parameter) maps each
   gradient to `dim` numbers while preserving inner products in expectation; vectors are
   L2-normalised.
5. Score = mean cosine to a target set's examples, max over target sets.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..data.example import Example
from ..train.checkpoint import latest_checkpoint, load_checkpoint
from ..train.config import TrainConfig
from ..train.distributed import DistInfo, barrier
from ..train.loop import train
from ..train.setup import load_trainable_state, trainable_state
from ..kernels.loss import padded_label_losses
from ..kernels.unwrap import backbone_and_head
from .features import ScoringContext, compute_cached, pad_batch
from .store import content_key


@dataclass
class LessConfig:
    """LESS settings (defaults sized for a CPU; the paper used r=128 and 8192 dimensions)."""

    warmup_share: float = 0.05  # share of the pool the warm-up adapter trains on
    warmup_min: int = 64
    warmup_epochs: float = 2.0
    warmup_lr: float = 2e-3
    warmup_batch: int = 8
    r: int = 8
    layers: int = 8  # LoRA on the top `layers` decoder layers only: backward stops below them
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    dim: int = 4096
    seed: int = 0
    eps: float = 1e-8


def _warmup_indices(n: int, cfg: LessConfig) -> np.ndarray:
    size = min(n, max(cfg.warmup_min, int(round(cfg.warmup_share * n))))
    return np.sort(np.random.default_rng(cfg.seed).choice(n, size=size, replace=False))


def warmed_up_model(ctx: ScoringContext, examples: Sequence[Example], cfg: LessConfig):
    """A LoRA copy of ctx.model after the warm-up, and the Adam moments per trainable tensor."""
    idx = _warmup_indices(len(examples), cfg)
    key = content_key("less-warmup", ctx.fingerprint, asdict(cfg), [examples[i].messages for i in idx])
    run_dir = ctx.cache_dir / "less" / key
    train_cfg = TrainConfig(method="lora", epochs=cfg.warmup_epochs,
                            batch_size=cfg.warmup_batch, lr=cfg.warmup_lr, warmup_steps=2, seed=cfg.seed,
                            save_every=10_000, keep_checkpoints=1)
    model = _lora_copy(ctx.model, cfg)
    info = ctx.info
    done = run_dir / "checkpoints"
    if info.is_main and _unfinished(done):
        samples = [ctx.tokenize(examples[i]) for i in idx]
        train(model, samples, train_cfg, run_dir, resume=True, dist_info=DistInfo())
    barrier(info)
    weights, state, _ = load_checkpoint(latest_checkpoint(done))
    load_trainable_state(model, weights)
    opt_state = state["optimizer"]["state"]
    moments = {}
    for i, (name, _) in enumerate(trainable_state(model).items()):
        s = opt_state[i] if i in opt_state else opt_state[str(i)]
        moments[name] = (s["exp_avg"], s["exp_avg_sq"])
    return model, moments, key


def _lora_copy(base: torch.nn.Module, cfg: LessConfig):
    """A LoRA-wrapped copy of the base model with adapters on the top `cfg.layers` layers."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    n_layers = base.config.num_hidden_layers
    layers = list(range(max(0, n_layers - cfg.layers), n_layers))
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(base)
    model.config.use_cache = False
    return get_peft_model(model, PeftLoraConfig(r=cfg.r, lora_alpha=2 * cfg.r, lora_dropout=0.0,
                                                target_modules=cfg.target_modules, layers_to_transform=layers,
                                                bias="none", task_type="CAUSAL_LM"))


def _unfinished(ckpt_root) -> bool:
    latest = latest_checkpoint(ckpt_root)
    if latest is None:
        return True
    _, _, meta = load_checkpoint(latest)
    return meta["step"] < meta["total_steps"]


class GradientFeatures:
    """Per-example LoRA gradients of a PEFT model, projected by a count sketch to `dim`."""

    def __init__(self, model, moments: dict[str, tuple[torch.Tensor, torch.Tensor]], dim: int, seed: int,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.model, self.moments, self.dim, self.betas, self.eps = model, moments, dim, betas, eps
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.layers = []  # (name of A weight, A module, name of B weight, B module)
        for mod_name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                self.layers.append((f"{mod_name}.lora_A.default.weight", mod.lora_A["default"],
                                    f"{mod_name}.lora_B.default.weight", mod.lora_B["default"]))
        gen = torch.Generator().manual_seed(seed)
        # Count sketch: parameter element j of tensor t goes to bucket[t][j] with sign[t][j].
        self.bucket = {n: torch.randint(dim, (p.numel(),), generator=gen) for n, p in self.params.items()}
        self.sign = {n: torch.randint(2, (p.numel(),), generator=gen).float() * 2 - 1 for n, p in self.params.items()}

    def per_example_grads(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
                          ) -> dict[str, torch.Tensor]:
        """Gradient of each example's mean label-token loss: {weight name: [B, *weight shape]}."""
        saved: dict[int, dict[str, torch.Tensor]] = {}
        handles = []

        def keep(module):
            def hook(mod, inputs, output):
                slot = saved.setdefault(id(mod), {})
                slot["in"] = inputs[0].detach()
                output.register_hook(lambda g: slot.__setitem__("grad", g.detach()))
            return module.register_forward_hook(hook)

        for _, a_mod, _, b_mod in self.layers:
            handles += [keep(a_mod), keep(b_mod)]
        try:
            backbone, head = backbone_and_head(self.model)
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            per_example, _ = padded_label_losses(head, hidden, labels)
            # Examples do not interact (right padding, causal attention), so the gradient of the
            # sum holds each example's own gradient at its own positions.
            torch.autograd.grad(per_example.sum(), list(self.params.values()))
        finally:
            for h in handles:
                h.remove()
        grads = {}
        for a_name, a_mod, b_name, b_mod in self.layers:
            a, b = saved[id(a_mod)], saved[id(b_mod)]
            grads[a_name] = torch.einsum("btr,bti->bri", a["grad"], a["in"])  # [B, r, in]
            grads[b_name] = torch.einsum("bto,btr->bor", b["grad"], b["in"])  # [B, out, r]
        return grads

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, adam: bool) -> np.ndarray:
        """ids, mask, labels [B, T] -> unit-norm projected features [B, dim]."""
        B = ids.shape[0]
        feats = torch.zeros(B, self.dim)
        for name, g in self.per_example_grads(ids, mask, labels).items():
            g = g.reshape(B, -1)
            if adam:
                m, v = (t.reshape(1, -1) for t in self.moments[name])
                m = self.betas[0] * m + (1 - self.betas[0]) * g
                v = self.betas[1] * v + (1 - self.betas[1]) * g * g
                g = m / torch.sqrt(v + self.eps)
            feats.index_add_(1, self.bucket[name], g * self.sign[name])
        return torch.nn.functional.normalize(feats, dim=1).numpy()


def less_features(ctx: ScoringContext, examples: Sequence[Example], targets: Sequence[Example], cfg: LessConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(pool features [n, dim] with Adam preconditioning, target features [m, dim] plain)."""
    model, moments, warm_key = warmed_up_model(ctx, examples, cfg)
    model.eval()
    feature = GradientFeatures(model, moments, cfg.dim, cfg.seed, eps=cfg.eps)
    pad = ctx.tokenizer.pad_token_id or 0

    def batch_fn(adam: bool):
        def fn(exs: list[Example]) -> np.ndarray:
            toks = [ctx.tokenize(e) for e in exs]
            ids, mask = pad_batch([t.input_ids for t in toks], pad)
            labels, _ = pad_batch([t.labels for t in toks], -100)
            return feature(ids, mask, labels, adam)
        return fn

    params = {"warmup": warm_key, "dim": cfg.dim}
    pool = compute_cached(ctx, "less", "less-train", params, examples, batch_fn(True), "gradients (LESS)")
    tgt = compute_cached(ctx, "less", "less-target", params, targets, batch_fn(False), "target gradients (LESS)")
    return pool, tgt


def less_score_matrix(pool: np.ndarray, target_sets: Sequence[np.ndarray]) -> np.ndarray:
    """[K, n]: mean cosine of every pool example to each target set's gradients."""
    return np.stack([(pool @ t.T).mean(axis=1) for t in target_sets])
