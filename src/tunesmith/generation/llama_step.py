"""The decode step of Llama-architecture models, written out: one new token per live row of the
slot cache, the same operations in the same order as transformers' `LlamaForCausalLM.forward`
(so greedy outputs stay token-identical) without its per-call machinery.

Why: a SmolLM2-135M decode step is 30 layers of small matmuls. Through transformers' forward each
step also builds masks, cache-position tensors and output objects and passes through a few
thousand Python frames; at 16 rows on this 2-core CPU that was a large share of a 65 ms step.
Here a step is ~12 tensor operations per layer, reading the weights of the model's own modules in
place (nothing is copied, so a model that changes is seen as it is).

Only models this file can reproduce exactly take it (`LlamaStep.supports`): model_type "llama",
SiLU MLP, plain `nn.Linear` projections (no PEFT wrappers, no quantized modules), no tensor-
parallel split. Everything else goes through the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.decode_attention import decode_attention
from .kv import SlotCache


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm.forward, op for op: variance in fp32, weight applied in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaStep:
    """Runs decode steps of a Llama-architecture transformers model over a SlotCache."""

    def __init__(self, model):
        self.model = model
        self.body = model.model
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @staticmethod
    def supports(model) -> bool:
        """True when this step computes exactly what the model's own forward does."""
        cfg = getattr(model, "config", None)
        body = getattr(model, "model", None)
        if cfg is None or body is None or getattr(cfg, "model_type", None) != "llama":
            return False
        if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        if type(model).__name__ != "LlamaForCausalLM" or type(model.lm_head) is not nn.Linear:
            return False
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if any(type(m) is not nn.Linear for m in linears):  # PEFT / quantized wrappers: own forward
                return False
        return True

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """tokens [n] (each live row's last token) -> logits [n, V] in fp32; every row's keys and
        values are written at column lens[r]. The caller advances the cache (after_step)."""
        n = tokens.shape[0]
        rows, lens = cache.row_ids[:n], cache.lens[:n]  # [n], [n]
        cols = torch.arange(cache.capacity, device=tokens.device)
        mask = (cols[None, :] <= lens[:, None])[:, None, None, :]  # [n, 1, 1, C]: own prefix + new column
        x = self.body.embed_tokens(tokens[:, None])  # [n, 1, hidden]
        cos, sin = self.body.rotary_emb(x, lens[:, None])  # [n, 1, D] each, at position lens[r]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [n, 1, 1, D]: broadcast over heads
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            h = _rms_norm(layer.input_layernorm, x)  # [n, 1, hidden]
            q = attn.q_proj(h).view(n, 1, self.heads, self.head_dim)  # [n, 1, H, D]
            k = attn.k_proj(h).view(n, 1, self.kv_heads, self.head_dim)
            v = attn.v_proj(h).view(n, 1, self.kv_heads, self.head_dim)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            k_buf, v_buf = cache.keys[i], cache.values[i]  # [S, H_kv, C, D]
            k_buf[rows, :, lens] = k[:, 0]  # [n, H_kv, D] into each row's own column
            v_buf[rows, :, lens] = v[:, 0]
            out, _ = decode_attention(attn, q.transpose(1, 2), k_buf[:n], v_buf[:n], mask,
                                      scaling=attn.scaling)  # [n, 1, H, D]
            x = x + attn.o_proj(out.reshape(n, 1, -1))
            h = _rms_norm(layer.post_attention_layernorm, x)
            mlp = layer.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        x = _rms_norm(self.body.norm, x)
        return self.model.lm_head(x[:, 0]).float()  # [n, V]
