"""The prefill and decode step of Llama-architecture models, written out: the joining prompts packed
into one row, and one new token per live row of the slot cache; the same operations in the same
order as transformers' `LlamaForCausalLM.forward` without its per-call machinery (greedy outputs
equal `model.generate`'s: tests/test_engine.py).

Why: a SmolLM2-135M decode step is 30 layers of small matmuls. Through transformers' forward each
step also builds masks, cache-position tensors and output objects and passes through a few
thousand Python frames; at 16 rows on this 2-core CPU that was a large share of a 65 ms step.
Here a step is ~12 tensor operations per layer, and attention runs per group of rows of similar
length, each over its own longest row's columns (kv.SlotPool.attention_groups; on IFBench, where a
2,600-token prompt runs beside ~115-token ones, that alone took the 294 prompts from 564 to 457 s).
On CPU (fp32 or bf16) both passes run q/k/v and gate/up as
one matmul each, on weights packed once for oneDNN (`_Projection`). In bf16 that is bit-equal to the
forward and a step at 16 rows takes 47 instead of 63 ms (SmolLM2-135M here). In fp32 oneDNN sums in
another order than MKL's sgemm (differences ~1e-7 relative): greedy outputs stayed identical on all
294 IFBench prompts (512 tokens each), the fp32 decode linears run about 2x faster and a 115-token
prefill 181 instead of 214 ms. Elsewhere (no
oneDNN, a GPU) each module runs itself. Either way a model that changes between steps is seen as it is.

Only models this file can reproduce exactly take it (`LlamaStep.supports`): model_type "llama",
SiLU MLP, plain `nn.Linear` projections (no PEFT wrappers, no quantized modules), no tensor-
parallel split. Everything else goes through the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transformers.cache_utils import DynamicCache

from ..kernels.attention import packed_attention
from ..kernels.decode_attention import decode_attention
from .kv import SlotCache, prefill_cache


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm.forward, op for op: variance in fp32, weight applied in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _packs(dtype: torch.dtype, device: torch.device) -> bool:
    """True where oneDNN's pre-packed linear is available for this dtype and computes what F.linear
    does: the same bits in bf16, the same to ~1e-7 relative in fp32.

    torch's own bf16 linear on CPU already runs oneDNN's matmul and reorders the weight into oneDNN's
    blocked layout on every call; a weight packed once skips that reorder and gives the same bits.
    fp32 linears run MKL's sgemm, which streams the weights at about 6 GB/s at 16-32 rows here
    against 16 GB/s for oneDNN on packed weights; oneDNN sums in another order, so the last bits
    differ (checked: greedy outputs identical on the 294 IFBench prompts, see BENCHMARKS.md).
    """
    if dtype not in (torch.float32, torch.bfloat16) or device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(96, 64, generator=gen).to(dtype)
        x = torch.randn(3, 64, generator=gen).to(dtype)
        got = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w), None, "none", [], "")
        want = F.linear(x, w)
        return torch.equal(got, want) if dtype == torch.bfloat16 else torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    except (RuntimeError, AttributeError):  # a torch built without these oneDNN ops
        return False


class _Projection:
    """One or more of a layer's Linears applied as one. Packed (CPU with oneDNN): q/k/v and gate/up are
    concatenated, so a decode step runs 4 matmuls per layer instead of 7, and each weight is packed
    once into oneDNN's layout instead of on every call. Unpacked (no oneDNN, a GPU): each module
    runs itself, on its own weights, and the outputs are joined. At 16 rows with the weights not in
    cache (as in a real step, which streams all of them), a [16, 576] x [576, 1536] linear takes
    132 us packed against 207 us through F.linear in bf16 (identical results), 213 against 436 us in fp32.

    The concatenated / packed copies are made from the model's own weights, and made again
    whenever one of them changes (another tensor, other storage, or an in-place update such as an
    optimizer step, which bumps the tensor's version counter), so a model that trains between
    evaluations is seen as it is. The price: one more copy of those weights while the step exists
    (the unpacked path keeps none).
    """

    def __init__(self, linears: tuple[nn.Linear, ...], pack: bool):
        self.linears, self.pack = linears, pack
        self._key: tuple | None = None
        self.weight: torch.Tensor | None = None  # [sum out, in], packed for oneDNN
        self.bias: torch.Tensor | None = None  # [sum out] or None

    def _source_key(self) -> tuple:
        return tuple((id(m.weight), m.weight.data_ptr(), m.weight._version,
                      None if m.bias is None else (m.bias.data_ptr(), m.bias._version)) for m in self.linears)

    def _build(self) -> None:
        linears = self.linears
        weight = linears[0].weight.detach() if len(linears) == 1 else torch.cat([m.weight.detach() for m in linears])
        if all(m.bias is None for m in linears):
            self.bias = None
        else:
            self.bias = torch.cat([m.bias.detach() if m.bias is not None
                                   else m.weight.new_zeros(m.out_features) for m in linears])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., sum out]."""
        if not self.pack:  # the modules themselves: no copy kept
            outs = [m(x) for m in self.linears]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        key = self._source_key()
        if key != self._key:
            self._build()
            self._key = key
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class LlamaStep:
    """Runs prefills and decode steps of a Llama-architecture transformers model (a SlotCache for
    decode steps) on the same packed projections."""

    def __init__(self, model):
        self.model = model
        self.body = model.model
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        weight = model.lm_head.weight
        pack = _packs(weight.dtype, weight.device)
        # Attention per length group reads views [m, H, W, D] of slots [m, H, capacity, D]. fp32's
        # batched matmul takes those strided views in place; bf16's copies them first, which cost
        # more than the columns saved (serve mix, bf16, 16 rows: 145 against 170 tok/s), so other
        # dtypes attend over the whole capacity as one group, on contiguous slots.
        self.groups_rows = weight.dtype == torch.float32
        layers = self.body.layers
        self.qkv = [_Projection((lay.self_attn.q_proj, lay.self_attn.k_proj, lay.self_attn.v_proj), pack)
                    for lay in layers]
        self.o = [_Projection((lay.self_attn.o_proj,), pack) for lay in layers]
        self.gate_up = [_Projection((lay.mlp.gate_proj, lay.mlp.up_proj), pack) for lay in layers]
        self.down = [_Projection((lay.mlp.down_proj,), pack) for lay in layers]
        self.lm_head = _Projection((model.lm_head,), pack)

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

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's attention inputs for x [b, t, hidden]: (qkv [b, t, H + 2 H_kv, D] as projected,
        qk [b, t, H + H_kv, D]: queries and keys rotated, as they take the same rotation)."""
        heads, kv_heads = self.heads, self.kv_heads
        b, t = x.shape[:2]
        h = _rms_norm(self.body.layers[i].input_layernorm, x)
        qkv = self.qkv[i](h).view(b, t, heads + 2 * kv_heads, self.head_dim)
        qk = qkv[:, :, :heads + kv_heads]
        return qkv, (qk * cos) + (_rotate_half(qk) * sin)

    def _mlp_residual(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """x plus layer i's MLP of its post-attention norm (x [b, t, hidden])."""
        h = _rms_norm(self.body.layers[i].post_attention_layernorm, x)
        gate, up = self.gate_up[i](h).chunk(2, dim=-1)  # [b, t, I] each
        return x + self.down[i](F.silu(gate) * up)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, DynamicCache]:
        """Prompts packed into one row, each attending to itself only (kernels.attention's
        per-prompt causal attention, as the forward runs it under packed_attention_enabled) ->
        each prompt's last logits [k, V] in fp32, and a prefill cache whose layers hold the
        prompts' keys and values one after another ([1, H_kv, sum L, D])."""
        heads, kv_heads = self.heads, self.kv_heads
        device = self.model.lm_head.weight.device
        ids = torch.tensor([[t for p in prompts for t in p]], dtype=torch.long, device=device)  # [1, L]
        positions = torch.cat([torch.arange(len(p), device=device) for p in prompts])[None, :]  # [1, L]
        length = ids.shape[1]
        x = self.body.embed_tokens(ids)  # [1, L, hidden]
        cos, sin = self.body.rotary_emb(x, positions)  # [1, L, D] each
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [1, L, 1, D]: broadcast over heads
        cache = prefill_cache()
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            qkv, qk = self._qkv(i, x, cos, sin)  # [1, L, H + 2 H_kv, D], [1, L, H + H_kv, D]
            q = qk[:, :, :heads].transpose(1, 2)  # [1, H, L, D]
            # own copies: views would keep this layer's whole q/k/v output alive in the cache (4.5x the memory)
            k = qk[:, :, heads:].transpose(1, 2).contiguous()  # [1, H_kv, L, D]
            v = qkv[:, :, heads + kv_heads:].transpose(1, 2).contiguous()
            k, v = cache.update(k, v, i)
            out, _ = packed_attention(attn, q, k, v, None, scaling=attn.scaling,
                                      position_ids=positions)  # [1, L, H, D]
            x = self._mlp_residual(i, x + self.o[i](out.reshape(1, length, -1)))
        last = torch.tensor([len(p) for p in prompts], device=device).cumsum(0) - 1  # [k]
        x = _rms_norm(self.body.norm, x[0, last])  # [k, hidden]: only the last positions are read
        return self.lm_head(x).float(), cache

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """tokens [n] (each live row's last token) -> logits [n, V] in fp32; every row's keys and
        values are written at column lens[r]. The caller advances the cache (after_step)."""
        n = tokens.shape[0]
        heads, kv_heads = self.heads, self.kv_heads
        lens = cache.row_lengths()  # [n]
        # Per pool (rows [offset, offset + m) of the batch): its slots, lengths, and the groups of its
        # rows that attend together, each over its own longest row's columns (kv.py). Additive masks,
        # made once per step for all layers: 0 on a row's own prefix and the new column, -inf past
        # them (softmax gives those exactly 0, as a boolean mask would; adding one is ~6x faster than
        # masked_fill's broadcast here).
        plan = []
        for offset, pool in cache.segments():
            m = pool.n
            groups = pool.attention_groups() if self.groups_rows else [(0, m, pool.capacity)]
            cols = torch.arange(max(width for _, _, width in groups), device=tokens.device)
            pool_lens = pool.lens[:m]
            masks = [torch.where(cols[None, :width] <= pool_lens[start:end, None], 0.0, float("-inf"))[:, None, None, :]
                     for start, end, width in groups]  # [g, 1, 1, W_g] fp32 each
            plan.append((offset, pool, pool.row_ids[:m], pool_lens, groups, masks))
        x = self.body.embed_tokens(tokens[:, None])  # [n, 1, hidden]
        cos, sin = self.body.rotary_emb(x, lens[:, None])  # [n, 1, D] each, at position lens[r]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [n, 1, 1, D]: broadcast over heads
        for i, layer in enumerate(self.body.layers):
            attn = layer.self_attn
            qkv, qk = self._qkv(i, x, cos, sin)  # [n, 1, H + 2 H_kv, D], [n, 1, H + H_kv, D]
            q, k, v = qk[:, :, :heads], qk[:, :, heads:], qkv[:, :, heads + kv_heads:]
            q = q.transpose(1, 2)  # [n, H, 1, D]
            outs = []
            for offset, pool, rows, pool_lens, groups, masks in plan:
                k_buf, v_buf = pool.keys[i], pool.values[i]  # [S, H_kv, C, D]
                end_row = offset + pool.n
                k_buf[rows, :, pool_lens] = k[offset:end_row, 0]  # [m, H_kv, D] into each row's own column
                v_buf[rows, :, pool_lens] = v[offset:end_row, 0]
                outs += [decode_attention(attn, q[offset + start:offset + end], k_buf[start:end, :, :width],
                                          v_buf[start:end, :, :width], mask, scaling=attn.scaling)[0]  # [g, 1, H, D]
                         for (start, end, width), mask in zip(groups, masks)]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)  # [n, 1, H, D]
            x = self._mlp_residual(i, x + self.o[i](out.reshape(n, 1, -1)))
        x = _rms_norm(self.body.norm, x)
        return self.lm_head(x[:, 0]).float()  # [n, V]
