"""The training loop's settings: the `train:` recipe section and the flags of `tunesmith train`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import Section
from ..data.packing import MAX_TOKENS_PER_ROW


class LoraConfig(Section):
    """LoRA adapter shape (PEFT)."""

    r: int = Field(16, ge=1, description="rank of the adapter")
    alpha: float = Field(32.0, description="scale numerator: the update is (alpha / r) * B A")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input (0 keeps fused LoRA on)")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="module names to adapt, "
                                                                                       "or all-linear")
    init: Literal["default", "pissa", "corda", "loftq", "olora"] = Field(
        "default", description="adapter initialisation: default (B = 0), pissa (principal singular components), "
        "corda (context-oriented: covariance of the training prompts), loftq (W ~ Q(W) + BA, for a quantized "
        "base), olora (QR); all but default move the chosen components out of the frozen base weights")
    corda_samples: int = Field(256, ge=8, description="lora.init corda: training samples whose inputs give the "
                                                      "covariance")
    corda_method: Literal["ipm", "kpm"] = Field("ipm", description="lora.init corda: ipm (adapter from the "
                                                "principal components: learns fastest) or kpm (adapter from "
                                                "the least used ones: forgets least)")
    loftq_iters: int = Field(1, ge=1, description="lora.init loftq: alternating quantize / SVD iterations")


class DpoConfig(Section):
    """Preference tuning (train.objective: dpo): the loss and its strengths.

    Every loss compares the chosen and the rejected answer of a pair by their summed log-probs at
    the answer's label positions (per-token means where the loss is length-normalised):
      sigmoid  DPO (Rafailov et al. 2023): -logsigmoid(beta * margin), margin = (log-ratio to the
               reference of chosen) - (that of rejected); with label_smoothing ls, conservative DPO:
               (1 - ls) * -logsigmoid(beta * margin) + ls * -logsigmoid(-beta * margin)
      ipo      IPO (Azar et al. 2023): (margin - 1 / (2 * beta))^2 on per-token-mean log-ratios, as TRL
      simpo    SimPO (Meng et al. 2024): -logsigmoid(beta * (mean logp chosen - mean logp rejected) - gamma),
               no reference model; typical beta 2.0 and gamma/beta about 0.5
    """

    loss: Literal["sigmoid", "ipo", "simpo"] = Field("sigmoid", description="sigmoid (DPO), ipo or simpo")
    beta: float = Field(0.1, gt=0, description="strength of the preference (DPO/IPO: 0.1 is common; "
                                               "SimPO: about 2.0)")
    length_normalize: bool = Field(False, description="sigmoid on per-token-mean log-ratios (ipo and simpo "
                                                      "always are)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="assumed share of flipped labels "
                                                                   "(conservative DPO; sigmoid and simpo)")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO's target reward margin gamma")
    sft_weight: float = Field(0.0, ge=0.0, description="weight of an added NLL term on the chosen answers "
                                                       "(mean over their tokens in the step; 0: off)")

    @model_validator(mode="after")
    def _check(self) -> "DpoConfig":
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid and simpo losses, not to ipo: set it to 0")
        return self


class LisaConfig(Section):
    """LISA (Pan et al. 2024): every `period` steps, `layers` decoder layers drawn at random train fully; the
    embeddings and the output layer always train; everything else is frozen."""

    layers: int = Field(2, ge=1, description="decoder layers trained at a time")
    period: int = Field(20, ge=1, description="steps between two draws of the trained layers")


class GaloreConfig(Section):
    """GaLore (Zhao et al. 2024): full-parameter training whose 2-D weight gradients are projected to rank
    `rank` (projector from an SVD of the gradient, renewed every `update_proj_gap` steps); Adam's moments
    live in the low-rank space. Embeddings, output layer and norms take plain AdamW."""

    rank: int = Field(128, ge=1, description="rank of the projected gradient")
    update_proj_gap: int = Field(200, ge=1, description="steps between two projector updates (SVD)")
    scale: float = Field(0.25, gt=0, description="scale of the projected-back update")


class TrainConfig(Section):
    """The training loop: method, objective, batch, schedule, checkpoints and the training kernels."""

    method: Literal["lora", "dora", "full", "lisa", "galore"] = Field(
        "lora", description="what trains: lora (adapter only), dora (LoRA split into magnitude and direction), "
        "full (every weight), lisa (a few sampled full layers at a time, see train.lisa) or galore (every weight, "
        "low-rank gradient projection, see train.galore)")
    objective: Literal["sft", "dpo"] = Field("sft", description="sft (learn the answers) or dpo (learn "
                                                                "preferences from chosen/rejected pairs)")
    dpo: DpoConfig = DpoConfig()
    lora: LoraConfig = LoraConfig()
    lisa: LisaConfig = LisaConfig()
    galore: GaloreConfig = GaloreConfig()
    base_quant: Literal["none", "int8", "int4"] = Field(
        "none", description="lora: keep the frozen base Linear weights quantized in memory (int8 per channel, or "
        "int4 per group with a scale and a minimum, GGUF's Q4_1 layout; dequantized layer by layer in forward and "
        "backward; QLoRA-style); the merged model is the adapter merged into the dequantized base")
    base_quant_group_size: int = Field(32, ge=2, description="base_quant int4 (and lora.init loftq): input "
                                       "channels per scale and minimum, even (32 as Q4_1; a layer whose "
                                       "in_features is not a multiple stays fp32)")
    neftune_alpha: float = Field(0.0, ge=0.0, description="NEFTune: uniform noise of scale alpha / sqrt(L * d) on "
                                 "the input embeddings while training (L: the sample's tokens); 5 is common; 0: off")
    epochs: float = Field(1.0, gt=0, description="passes over the data (a ragged last batch is dropped)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(16, ge=1, description="samples per optimizer step")
    micro_batch_size: int | None = Field(None, ge=1, description="samples per forward (gradient accumulation); "
                                                                 "default: batch_size")
    max_tokens_per_row: int = Field(MAX_TOKENS_PER_ROW, ge=8, description="padding-free packing budget per forward "
                                    "(activation memory grows with it; a longer sample gets its own row)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm (null: off)")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="a step whose loss or gradient norm is NaN/inf "
                                                  "(caught before the update): stop (save the state before it, name "
                                                  "its samples) or skip (drop the step, log it in metrics.jsonl)")
    max_consecutive_skips: int = Field(5, ge=1, description="on_nonfinite skip: stop once this many steps in a row "
                                                            "were skipped")
    seed: int = Field(0, description="LoRA initialisation and data order")
    loss_chunk_size: int = Field(512, ge=1, description="label positions per output-layer chunk")
    fused_lora: bool = Field(True, description="fold the LoRA product into the base GEMM (addmm) while training")
    swiglu_recompute: bool = Field(True, description="SwiGLU MLPs keep only gate and up for backward "
                                                     "(~30% less activation memory)")
    gradient_checkpointing: bool = Field(False, description="keep only each decoder layer's input for backward and "
                                         "recompute the layer there: activation memory of one layer instead of "
                                         "all (quickstart LoRA: peak RSS 1.93 -> 1.55 GB) for one more decoder "
                                         "forward per step (there 1.5x the step time)")
    kl_to_base: float = Field(0.0, ge=0.0, description="weight of a KL(base || tuned) term on the answer tokens of "
                                                        "replay rows (LoRA: the base is the model with the adapter "
                                                        "off; needs replay.ratio > 0; 0: off)")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: ddp (a full copy per rank) or "
                                                "fsdp (FSDP2: weights, gradients and optimizer state sharded per "
                                                "decoder layer; checkpoints resume on any number of ranks)")
    save_every: int = Field(50, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (the best one is never pruned)")
    log_every: int = Field(1, ge=1, description="steps between metrics.jsonl lines")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars (needs tensorboard)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")

    @field_validator("method", mode="before")
    @classmethod
    def _method_is_what_trains(cls, value):
        if isinstance(value, str) and value.lower() in ("dpo", "ipo", "simpo", "preference"):
            raise ValueError(f"'{value}' is an objective, not a method: train.method says what is trained "
                             f"(lora, dora, full, lisa or galore); write train.objective: dpo" +
                             (f" with train.dpo.loss: {value.lower()}" if value.lower() in ("ipo", "simpo") else ""))
        return value

    @model_validator(mode="after")
    def _check_method(self) -> "TrainConfig":
        """Combinations that cannot work, refused with what to do instead (a section left at its defaults
        counts as absent, so a resolved config.yaml validates again)."""
        m, init, quant = self.method, self.lora.init, self.base_quant
        adapter = m in ("lora", "dora")
        if m in ("lisa", "galore") and self.lora != LoraConfig():
            raise ValueError(f"train.lora configures an adapter, but train.method {m} trains the weights themselves: "
                             f"remove train.lora (or set train.method: lora)")
        if self.lisa != LisaConfig() and m != "lisa":
            raise ValueError(f"train.lisa applies to train.method: lisa (this recipe has {m}): remove it or set "
                             "train.method: lisa")
        if self.galore != GaloreConfig() and m != "galore":
            raise ValueError(f"train.galore applies to train.method: galore (this recipe has {m}): remove it or set "
                             "train.method: galore")
        if init != "default" and not adapter:
            raise ValueError(f"train.lora.init {init} initialises an adapter, but train.method {m} has none: set "
                             "train.method: lora")
        if m == "dora" and init != "default":
            raise ValueError(f"train.lora.init {init} with train.method dora is not supported: use train.method: "
                             f"lora with init {init}, or dora with init default")
        if quant != "none" and m != "lora":
            raise ValueError(f"train.base_quant {quant} keeps a frozen base quantized, which only train.method: lora "
                             f"has (method {m} " + ("trains the base weights" if not adapter else
                                                     "needs the full-precision weight in every step") +
                             "): set train.base_quant: none, or train.method: lora")
        if quant != "none" and init in ("pissa", "corda", "olora"):
            raise ValueError(f"train.lora.init {init} with train.base_quant {quant} is not supported (the "
                             "initialisation needs the fp32 base): use lora.init loftq, made for a quantized base, or "
                             "train.base_quant: none")
        if (quant == "int4" or init == "loftq") and self.base_quant_group_size % 2:
            raise ValueError(f"train.base_quant_group_size {self.base_quant_group_size} is odd; int4 packs two values "
                             "per byte within a group: use an even size (32 is GGUF's Q4_1)")
        if quant != "none" and self.kl_to_base:
            raise ValueError("train.kl_to_base with train.base_quant is not supported: set one of them off")
        if self.neftune_alpha and self.objective != "sft":
            raise ValueError("train.neftune_alpha applies to train.objective: sft: set it to 0 for dpo")
        if self.distributed == "fsdp" and (m in ("dora", "lisa", "galore") or quant != "none" or init != "default"):
            what = f"train.method {m}" if m in ("dora", "lisa", "galore") else \
                f"train.base_quant {quant}" if quant != "none" else f"train.lora.init {init}"
            raise ValueError(f"train.distributed: fsdp does not support {what} (the sharded path trains plain lora and "
                             "full): set train.distributed: ddp")
        return self

    @model_validator(mode="after")
    def _check_kl(self) -> "TrainConfig":
        if self.kl_to_base and (self.method != "lora" or self.objective != "sft"):
            raise ValueError("train.kl_to_base needs train.method: lora and train.objective: sft (the base is the "
                             "model with its adapter off)")
        return self

    @model_validator(mode="after")
    def _check_fsdp(self) -> "TrainConfig":
        if self.distributed == "fsdp" and (self.objective != "sft" or self.kl_to_base):
            raise ValueError("train.distributed: fsdp trains objective sft without kl_to_base (dpo and the KL term "
                             "run under ddp for now)")
        return self

    @model_validator(mode="after")
    def _check_micro(self) -> "TrainConfig":
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        return self
