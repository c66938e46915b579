"""Chat generation for the eval suites, `tunesmith generate` and `chat`: chat-template prompts run
through the generation engine (continuous batching, KV cache, greedy by default).

Results come back in input order. Greedy decoding gives the tokens `model.generate` gives with left
padding; sampling is seeded per conversation (conversation i uses seed `seed + i`), so a sampled
answer does not depend on the batch size or on the other conversations.
"""

from __future__ import annotations

from typing import Callable

from ..data.chat import render
from ..generation.engine import Engine
from ..generation.requests import SamplingParams


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Inference prompt tokens: the chat template with the generation prompt appended."""
    return render(tokenizer, messages, add_generation_prompt=True)


def generate(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int = 64,
             batch_size: int = 16, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             stop: list[str] | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Complete each conversation's next assistant turn; returns the decoded texts.

    Generation stops at EOS / the end-of-turn token; `stop` strings additionally cut the text.
    `batch_size` is the most conversations decoded together; `progress(k)` is called as k more finish.
    """
    encoded = [prompt_ids(tokenizer, c) for c in conversations]
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed if temperature > 0 else None, stop=list(stop or []))
    engine = Engine(model, tokenizer, max_batch=batch_size, max_queue=max(len(encoded), 1))
    return [completions[0].text for completions in engine.generate(encoded, params, progress=progress)]
