"""What one request may ask and how many may be in flight: every bound is checked before the
request reaches the engine, so a refused request never touches the model.

Body size (413), prompt tokens, new tokens, n and top_logprobs (400 naming the parameter), and
admission: at most max_concurrent requests generate and max_queue wait; beyond that, 429 with a
Retry-After header (the engine's own QueueFull is answered the same way).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

from pydantic import Field

from ..config import Section
from .apierror import APIError, bad_request


class Limits(Section):
    """Bounds on requests (shared by `tunesmith serve` flags and the app)."""

    max_concurrent: int = Field(16, ge=1, description="requests generating at once (the engine's batch)")
    max_queue: int = Field(64, ge=0, description="requests waiting for a free slot; more are refused with 429 "
                                                 "and Retry-After")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body in bytes (413 beyond)")
    max_prompt_tokens: int = Field(4096, ge=1, description="longest prompt in tokens, after the chat template")
    max_tokens: int = Field(1024, ge=1, description="most new tokens per completion; also the default when a "
                                                    "request gives no max_tokens")
    max_n: int = Field(8, ge=1, description="most completions per request (n, times the prompts of a "
                                            "/v1/completions batch)")
    max_top_logprobs: int = Field(20, ge=0, le=20, description="most alternatives per token (top_logprobs)")
    retry_after: int = Field(1, ge=1, description="seconds a refused (429) client is told to wait")


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large")


def check_n(n: int, prompts: int, limits: Limits) -> None:
    """n completions for each of `prompts` prompts must fit max_n."""
    if n > limits.max_concurrent:
        raise bad_request("n", f"n={n}: the completions of one prompt generate together, and this server runs at "
                               f"most {limits.max_concurrent} at once (max_concurrent)")
    if n * prompts > limits.max_n:
        what = f"n={n}" if prompts == 1 else f"n={n} for each of {prompts} prompts"
        raise bad_request("n", f"{what} asks for {n * prompts} completions; this server allows at most "
                               f"{limits.max_n} per request")


def check_top_logprobs(top: int, limits: Limits, param: str) -> None:
    if top > limits.max_top_logprobs:
        raise bad_request(param, f"'{param}' is {top}; this server allows at most {limits.max_top_logprobs}")


def new_tokens(asked: int | None, prompt_tokens: int, limits: Limits, context: int | None, param: str,
               prompt_param: str) -> int:
    """The new-token budget of a prompt: the request's (bounded by max_tokens and the context left)
    or, when not given, as many as max_tokens and the context allow."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise bad_request(prompt_param, f"the prompt is {prompt_tokens} tokens; this server allows at most "
                                        f"{limits.max_prompt_tokens}", "context_length_exceeded")
    room = limits.max_tokens if context is None else min(limits.max_tokens, context - prompt_tokens)
    if room < 1:
        raise bad_request(prompt_param, f"the prompt is {prompt_tokens} tokens and fills the model's context "
                                        f"of {context}", "context_length_exceeded")
    if asked is None:
        return room
    if asked > limits.max_tokens:
        raise bad_request(param, f"'{param}' is {asked}; this server allows at most {limits.max_tokens}")
    if context is not None and prompt_tokens + asked > context:
        raise bad_request(param, f"{prompt_tokens} prompt tokens + {param}={asked} exceed the model's context "
                                 f"of {context} tokens", "context_length_exceeded")
    return asked


class Admission:
    """Counts requests in flight; refuses (429) those beyond max_concurrent + max_queue."""

    def __init__(self, limits: Limits):
        self.capacity = limits.max_concurrent + limits.max_queue
        self.retry_after = limits.retry_after
        self.in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.in_flight >= self.capacity:
                raise self.full()
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)

    def full(self) -> APIError:
        """The 429 answer (also used when the engine itself reports QueueFull)."""
        return APIError(429, f"the server is busy ({self.capacity} requests in flight or waiting); retry in "
                             f"{self.retry_after} s", "rate_limit_exceeded", None, "rate_limit_exceeded",
                        {"Retry-After": str(self.retry_after)})
