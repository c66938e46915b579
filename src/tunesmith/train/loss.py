"""The training forward: one module whose forward is the summed label-only loss of a packed row.

The decoder runs padding-free (kernels.attention), the output layer only at label positions in
chunks (kernels.loss.chunked_cross_entropy), and the training kernels switch on for the forward:
fused LoRA and memory-light SwiGLU, or, with activation checkpointing, each decoder layer recomputed in
backward (train.gradient_checkpointing: then the light SwiGLU is off, its saving being part of the larger one).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..data.chat import IGNORE
from ..kernels.attention import packed_attention_enabled
from ..kernels.loss import chunked_cross_entropy, chunked_kl_to_reference
from ..kernels.unwrap import unwrap
from .checkpointing import layer_checkpointing
from .fused_lora import fused_lora_enabled
from .swiglu import light_swiglu_enabled


class PackedLoss(nn.Module):
    """forward(input_ids, position_ids, targets) -> summed label-only loss over the row.

    Wraps the causal LM so that DDP sees one module whose forward produces the loss: the decoder
    runs in a padding-free packed row, the output layer only at target positions, in chunks, and
    (fused_lora) plain LoRA layers fold their adapter product into the base GEMM, and
    (swiglu_recompute) SwiGLU MLPs keep only gate and up for backward, or (gradient_checkpointing)
    every decoder layer keeps only its input and is recomputed in backward.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 512, fused_lora: bool = True,
                 swiglu_recompute: bool = True, kl_weight: float = 0.0, gradient_checkpointing: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.fused_lora = fused_lora
        self.swiglu_recompute = swiglu_recompute and not gradient_checkpointing
        self.kl_weight = kl_weight
        self.gradient_checkpointing = gradient_checkpointing

    @contextmanager
    def kernels(self, lm: nn.Module):
        """The training forward's kernel switches, as one context (entered again for every recompute)."""
        with packed_attention_enabled(lm), fused_lora_enabled(self.model, self.fused_lora), \
                light_swiglu_enabled(self.model, self.swiglu_recompute):
            yield

    def hidden(self, input_ids, position_ids, embed_noise=None):
        """The decoder's last hidden states of a packed row: [1, L] ids -> [1, L, H].

        embed_noise: [1, L, H] added to the input embeddings (NEFTune, train.neftune)."""
        lm = unwrap(self.model)
        inputs = {"input_ids": input_ids}
        if embed_noise is not None:
            inputs = {"inputs_embeds": lm.get_input_embeddings()(input_ids) + embed_noise}
        # attention_mask=None + restarting position_ids + no cache -> per-sample causal attention.
        with self.kernels(lm), layer_checkpointing(lm, self.gradient_checkpointing, lambda: self.kernels(lm)):
            return lm.get_decoder()(**inputs, position_ids=position_ids, use_cache=False,
                                    attention_mask=None).last_hidden_state  # [1, L, H]

    def base_hidden(self, input_ids, position_ids):
        """The base model's hidden states of the row (the adapter off, no gradient): [1, L, H]."""
        if not hasattr(self.model, "disable_adapter"):
            raise ValueError("a KL term to the base needs a LoRA (PEFT) model: the base is the adapter switched off")
        with torch.no_grad(), self.model.disable_adapter():
            return self.hidden(input_ids, position_ids)

    def forward(self, input_ids, position_ids, targets, kl_mask=None, embed_noise=None):
        """kl_mask: bool [T] over the row's T targets (in order), True where the KL term to the base applies.
        embed_noise: [1, L, H] NEFTune noise for the input embeddings (training only)."""
        hidden = self.hidden(input_ids, position_ids, embed_noise)  # [1, L, H]
        keep = targets != IGNORE  # [1, L]
        head = unwrap(self.model).get_output_embeddings()
        h = hidden[keep]  # [T, H]
        loss = chunked_cross_entropy(h, head.weight, head.bias, targets[keep], self.chunk_size)
        if self.kl_weight and kl_mask is not None and bool(kl_mask.any()):
            ref = self.base_hidden(input_ids, position_ids)[keep][kl_mask]  # [K, H]
            loss = loss + self.kl_weight * chunked_kl_to_reference(h[kl_mask], ref, head.weight, head.bias,
                                                                   self.chunk_size)
        return loss
