"""Batched generation: chat-template prompts, left padding, KV cache, greedy by default.

Prompts are sorted by length before batching (less padding), and results are returned in the
input order. Greedy decoding is deterministic; sampling uses a seeded generator.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..data.chat import end_of_turn_ids, render


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Inference prompt tokens: the chat template with the generation prompt appended."""
    return render(tokenizer, messages, add_generation_prompt=True)


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int = 64,
             batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             stop: list[str] | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Complete each conversation's next assistant turn; returns the decoded texts.

    Generation stops at EOS / the end-of-turn token; `stop` strings additionally cut the text.
    """
    model.eval()
    device = next(model.parameters()).device
    eos = sorted(end_of_turn_ids(tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    encoded = [prompt_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(encoded)
    if temperature > 0:
        torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        # Left padding: every prompt ends at the same column, so new tokens line up.
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                      pad_token_id=pad_id, use_cache=True)
        if stop:  # end a row as soon as its text contains a stop string (and cut it below)
            kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:  # neutralise sampling knobs a model's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for row, i in enumerate(idx):
            text = tokenizer.decode(out[row, width:], skip_special_tokens=True)
            for s in stop or []:
                if s in text:
                    text = text[: text.index(s)]
            outputs[i] = text
        if progress is not None:
            progress(len(idx))
    return outputs
