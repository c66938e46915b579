"""Response bodies in OpenAI's shapes: chat.completion and its chunks, text_completion (legacy
completions) and its chunks, logprobs in both styles, and the server-sent-events framing.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from ..generation.requests import TokenLogprob
from .runner import Tally


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {json}` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class Shape:
    """The id, creation time and model shared by a response and all its chunks."""

    def __init__(self, prefix: str, model: str):
        self.id = new_id(prefix)
        self.created = int(time.time())
        self.model = model

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}


# ---- chat ---------------------------------------------------------------------------------------

def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(items: list[TokenLogprob], top: int) -> dict[str, Any]:
    """{"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": None}."""
    return {"content": [{**_entry(t.text, t.logprob), "top_logprobs": [_entry(s, lp) for _, s, lp in t.top[:top]]}
                        for t in items], "refusal": None}


def chat_response(shape: Shape, tally: Tally, logprobs: bool, top: int) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": tally.texts[i], "refusal": None},
                "logprobs": chat_logprobs(tally.logprobs[i], top) if logprobs else None,
                "finish_reason": tally.finish[i]} for i in range(tally.choices)]
    return {**shape.head("chat.completion"), "choices": choices, "usage": tally.usage()}


def chat_chunk(shape: Shape, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: dict[str, Any] | None = None, with_usage: bool = False) -> dict[str, Any]:
    chunk = {**shape.head("chat.completion.chunk"),
             "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
    return {**chunk, "usage": None} if with_usage else chunk


def usage_chunk(shape: Shape, obj: str, tally: Tally) -> dict[str, Any]:
    """The last chunk under stream_options.include_usage: no choices, the request's usage."""
    return {**shape.head(obj), "choices": [], "usage": tally.usage()}


# ---- legacy completions ---------------------------------------------------------------------------

def completion_logprobs(items: list[TokenLogprob], top: int, offset: int = 0) -> dict[str, Any]:
    """{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}."""
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{s: lp for _, s, lp in t.top[:top]} for t in items] if top else None,
            "text_offset": offsets}


def completion_response(shape: Shape, tally: Tally, logprobs: int | None) -> dict[str, Any]:
    choices = [{"index": i, "text": tally.texts[i], "finish_reason": tally.finish[i],
                "logprobs": completion_logprobs(tally.logprobs[i], logprobs) if logprobs is not None else None}
               for i in range(tally.choices)]
    return {**shape.head("text_completion"), "choices": choices, "usage": tally.usage()}


def completion_chunk(shape: Shape, index: int, text: str, finish: str | None = None,
                     logprobs: dict[str, Any] | None = None, with_usage: bool = False) -> dict[str, Any]:
    chunk = {**shape.head("text_completion"),
             "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    return {**chunk, "usage": None} if with_usage else chunk
