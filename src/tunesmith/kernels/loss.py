"""Loss at label positions: the one implementation training, evaluation and selection share.

Only positions that have a target go through the output layer, and they go through it in chunks
of `chunk_size` rows, so the (tokens x vocab) logit matrix never exists:

  chunked_cross_entropy   summed loss for training; the gradient of each chunk is formed right
                          away in the forward pass (softmax minus one-hot, times the weight), so
                          backward keeps no logits alive
  chunked_token_logprobs  log-probability of every target (preference losses need them one by
                          one); backward recomputes each chunk's logits, so no logits are kept
  chunked_kl_to_reference summed KL(reference || model) at the same positions (a pull towards the
                          base model), gradients formed in the forward pass as for the CE
  token_cross_entropy     per-token losses (evaluation, selection features; autograd as usual)
  packed_token_losses     per-token losses of a padding-free packed row, through the model
  padded_label_losses     mean loss per row of a right-padded batch (selection, LESS gradients)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.chat import IGNORE
from .attention import packed_attention_enabled
from .unwrap import unwrap


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), gradients computed chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        # hidden [M, H], weight [V, H], bias [V] or None, targets [M]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start:start + chunk_size]  # [C, H]
            t = targets[start:start + chunk_size]  # [C]
            logits = (h @ weight.T).float()  # [C, V], fp32 for a stable log-sum-exp
            if bias is not None:
                logits += bias.float()
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_h or need_w or need_b:
                # d(loss)/d(logits) = softmax - onehot, reusing the logits buffer in place.
                grad_logits = logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                g = grad_logits.to(hidden.dtype)
                if need_h:
                    grad_h[start:start + chunk_size] = g @ weight
                if need_w:
                    grad_w += (g.T @ h).float()
                if need_b:
                    grad_b += grad_logits.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        scale = lambda g, dt: None if g is None else (g * grad_out).to(dt)  # noqa: E731
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype),
                scale(grad_w, w_dtype), scale(grad_b, b_dtype), None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T (+ bias)` against `targets`, computed in chunks.

    hidden [M, H] (label positions only), weight [V, H], targets [M]. Returns a 0-d fp32 tensor.
    """
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size)


class _ChunkedLinearKL(torch.autograd.Function):
    """sum_i KL(softmax(ref_i @ weight.T + b) || softmax(hidden_i @ weight.T + b)): the reference's
    distribution is the target, gradients (to hidden only) formed chunk by chunk as in the CE."""

    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, bias, chunk_size):
        # hidden, ref_hidden [M, H] (the same positions), weight [V, H], bias [V] or None
        need_h = ctx.needs_input_grad[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        total = torch.zeros((), dtype=_logit_dtype(hidden.dtype), device=hidden.device)  # fp32, fp64 for fp64
        for start in range(0, hidden.shape[0], chunk_size):
            logp = _chunk_logits(hidden[start:start + chunk_size], weight, bias).log_softmax(-1)  # [C, V] fp32
            logr = _chunk_logits(ref_hidden[start:start + chunk_size], weight, bias).log_softmax(-1)  # [C, V]
            r = logr.exp()
            total += (r * (logr - logp)).sum()
            if need_h:  # d KL / d logits = softmax(policy) - softmax(reference)
                grad_h[start:start + chunk_size] = (logp.exp_().sub_(r)).to(hidden.dtype) @ weight
        ctx.save_for_backward(grad_h)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad_h,) = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out.to(grad_h.dtype)), None, None, None, None


def chunked_kl_to_reference(hidden: torch.Tensor, ref_hidden: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None, chunk_size: int = 512) -> torch.Tensor:
    """Summed KL(reference || model) of the output layer's distributions at the same positions, in chunks.

    hidden [M, H] (the model's, with grad), ref_hidden [M, H] (the reference's, no grad), weight [V, H].
    The output layer is taken as frozen (no gradient to weight or bias: LoRA does not train it).
    """
    return _ChunkedLinearKL.apply(hidden, ref_hidden.detach(), weight, bias, chunk_size)


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """logp_i = log_softmax(hidden_i @ weight.T + bias)[target_i], chunk by chunk.

    The upstream gradient differs per row (a preference loss weighs every sequence differently), so
    the gradient cannot be formed in the forward pass as in _ChunkedLinearCrossEntropy: backward
    recomputes each chunk's logits instead (one more output-layer GEMM, still never [M, V]).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        # hidden [M, H], weight [V, H], bias [V] or None, targets [M] -> logp [M] fp32 (fp64 for fp64 input)
        out = torch.empty(hidden.shape[0], dtype=_logit_dtype(hidden.dtype), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            logits = _chunk_logits(hidden[start:start + chunk_size], weight, bias)  # [C, V] fp32
            t = targets[start:start + chunk_size]  # [C]
            out[start:start + chunk_size] = logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(logits, -1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        size = ctx.chunk_size
        for start in range(0, hidden.shape[0], size):
            h = hidden[start:start + size]  # [C, H]
            t = targets[start:start + size]  # [C]
            g = grad_out[start:start + size].to(_logit_dtype(hidden.dtype))  # [C]
            logits = _chunk_logits(h, weight, bias)  # [C, V]
            # d(logp_i)/d(logits_i) = onehot(t_i) - softmax_i, times the upstream g_i, in place.
            grad_logits = logits.sub_(torch.logsumexp(logits, -1, keepdim=True)).exp_().mul_(-g[:, None])
            grad_logits[torch.arange(t.shape[0], device=t.device), t] += g
            gl = grad_logits.to(hidden.dtype)
            if need_h:
                grad_h[start:start + size] = gl @ weight
            if need_w:
                grad_w += (gl.T @ h).float()
            if need_b:
                grad_b += grad_logits.sum(0)
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    """Logits are at least fp32 (a stable log-sum-exp); fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[C, H] hidden rows -> [C, V] logits, at least fp32."""
    dtype = _logit_dtype(h.dtype)
    logits = (h @ weight.T).to(dtype)
    if bias is not None:
        logits += bias.to(dtype)
    return logits


def chunked_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Log-probability of each target under `hidden @ weight.T (+ bias)`, computed in chunks.

    hidden [M, H] (label positions only), weight [V, H], targets [M]. Returns [M] fp32 (fp64 for an
    fp64 model), with a backward that recomputes each chunk's logits (no [M, V] tensor ever exists).
    """
    return _ChunkedLinearLogProbs.apply(hidden, weight, bias, targets, chunk_size)


def token_cross_entropy(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                        chunk_size: int = 512) -> torch.Tensor:
    """Cross-entropy of every row: hidden [M, H] (label positions only), targets [M] -> [M] fp32.

    The output layer runs on `chunk_size` rows at a time ([C, V] logits, never [M, V])."""
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start:start + chunk_size]).float()  # [C, V]
        out.append(F.cross_entropy(logits, targets[start:start + chunk_size], reduction="none"))
    return torch.cat(out) if out else torch.zeros(0, device=hidden.device)


def packed_token_losses(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        targets: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Loss of every target position of a packed row ([1, L] each), in row order: [n_targets]."""
    lm = unwrap(model)
    # attention_mask=None + restarting position_ids + no cache -> per-sample causal attention.
    with packed_attention_enabled(lm):
        hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                  attention_mask=None).last_hidden_state  # [1, L, H]
    keep = targets != IGNORE
    return token_cross_entropy(hidden[keep], lm.get_output_embeddings(), targets[keep], chunk_size)


def padded_label_losses(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                        chunk_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token loss per row over label positions only, for a right-padded batch.

    hidden [B, T, H], labels [B, T] (IGNORE where untrained) -> (mean loss [B], count [B]).
    """
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]  # position t predicts token t+1
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    tok_loss = token_cross_entropy(hidden[rows, cols], head, targets[rows, cols], chunk_size)  # [N]
    B = labels.shape[0]
    total = torch.zeros(B, dtype=tok_loss.dtype).index_add_(0, rows, tok_loss)
    count = torch.zeros(B, dtype=tok_loss.dtype).index_add_(0, rows, torch.ones_like(tok_loss))
    return total / count.clamp(min=1), count
