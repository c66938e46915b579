"""IFD (instruction-following difficulty, Cherry LLM; Superfiltering with a smaller scorer).

IFD = PPL(response | instruction) / PPL(response alone) = exp(loss_cond - loss_uncond).
A high ratio means the instruction helps little to predict the response: the example is hard,
hence informative. A ratio of 1 or more means the instruction does not help at all, which on
real data mostly flags a response that does not answer its prompt; those are filtered out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.chat import IGNORE, render
from ..data.example import Example
from .embed import forward_features
from ..kernels.loss import padded_label_losses
from ..kernels.unwrap import backbone_and_head
from .features import ScoringContext, compute_cached, pad_batch


def _assistant_header(tokenizer) -> list[int]:
    """The tokens the template puts before an assistant reply (e.g. '<|im_start|>assistant\\n')."""
    msgs = [{"role": "user", "content": "x"}]
    with_prompt = render(tokenizer, msgs, add_generation_prompt=True)
    without = render(tokenizer, msgs, add_generation_prompt=False)
    return with_prompt[len(without):]


def response_losses(ctx: ScoringContext, examples: Sequence[Example]) -> np.ndarray:
    """[n, 3]: mean response loss with the prompt, without it (header + response only), tokens.

    The conditioned loss comes from the forward pass RDS+ shares (`forward_features`); only the
    short response-alone pass is extra.
    """
    backbone, head = backbone_and_head(ctx.model)
    pad = ctx.tokenizer.pad_token_id or 0
    header = _assistant_header(ctx.tokenizer)

    @torch.no_grad()
    def batch(exs: list[Example]) -> np.ndarray:
        alone = [[tok for tok in ctx.tokenize(e).labels if tok != IGNORE] for e in exs]
        ids, mask = pad_batch([header + a for a in alone], pad)
        labels, _ = pad_batch([[IGNORE] * len(header) + a for a in alone], IGNORE)
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        loss, _ = padded_label_losses(head, hidden, labels)
        return loss[:, None].float().numpy()

    conditioned = forward_features(ctx, examples)[:, -2:]  # [n, 2]: loss given prompt, tokens
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        alone = compute_cached(ctx, "losses", "response-alone-loss", {"max_seq_len": ctx.max_seq_len}, examples,
                               batch, "score (IFD, response alone)")
    finally:
        ctx.model.train(was_training)
    return np.stack([conditioned[:, 0], alone[:, 0], conditioned[:, 1]], axis=1)


def ifd_scores(losses: np.ndarray) -> np.ndarray:
    """[n, 3] from `response_losses` -> IFD [n]."""
    return np.exp(losses[:, 0] - losses[:, 1]).astype(np.float32)


def ifd_select(ifd: np.ndarray, budget: int, max_ifd: float = 1.0) -> tuple[np.ndarray, int]:
    """The `budget` highest-IFD examples among those below `max_ifd`; if too few are below,
    the rest come from the excluded ones closest to the cut. Returns (indices, n_excluded)."""
    valid = np.flatnonzero(ifd < max_ifd)
    excluded = np.flatnonzero(ifd >= max_ifd)
    order = valid[np.argsort(-ifd[valid], kind="stable")]
    if len(order) < budget:
        fill = excluded[np.argsort(ifd[excluded], kind="stable")][: budget - len(order)]
        order = np.concatenate([order, fill])
    return order[:budget], len(excluded)
