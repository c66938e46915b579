"""The two generation routes: POST /v1/chat/completions and POST /v1/completions.

Each reads top to bottom: read and validate the body, check the model and the limits, turn the
prompt into token ids (chat template or plain text), admit the request, submit it to the engine,
then answer with one JSON body or a stream of server-sent events ending in `data: [DONE]`.
Nothing reaches the engine before every check has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..data.chat import render
from ..generation.requests import Delta, SamplingParams
from .apierror import APIError, bad_request
from .limits import Admission, Limits, check_n, check_top_logprobs, new_tokens, read_body
from .metrics import Metrics
from .responses import (Shape, chat_chunk, chat_logprobs, chat_response, completion_chunk, completion_logprobs,
                        completion_response, sse, usage_chunk)
from .runner import EngineFailed, Job, cancel_on_disconnect
from .schemas import ChatRequest, CompletionRequest, _Sampling, parse_body


@dataclass
class State:
    """Everything the routes share: the engine and tokenizer, the served model's id and context."""

    engine: Any
    tokenizer: Any
    model_id: str
    limits: Limits
    admission: Admission
    metrics: Metrics
    queue_full: type[Exception]  # the engine's "batch and queue are full" (answered 429)
    closed: type[Exception]  # the engine's "shutting down" (answered 503)
    context: int | None = None  # the model's context length (prompt + new tokens), if known


async def chat(state: State, request: Request) -> Response:
    started = time.perf_counter()
    req = parse_body(ChatRequest, await read_body(request.stream(), request.headers.get("content-length"),
                                                  state.limits.max_body_bytes))
    n = _common_checks(state, req, 1)
    top = req.top_logprobs or 0
    check_top_logprobs(top, state.limits, "top_logprobs")
    try:
        ids = render(state.tokenizer, [m.to_template() for m in req.messages], add_generation_prompt=True)
    except Exception as exc:  # templates raise their own errors (e.g. roles they do not accept)
        raise bad_request("messages", f"the model's chat template cannot render these messages "
                                      f"({type(exc).__name__}: {exc})") from None
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    budget = new_tokens(req.new_tokens(), len(ids), state.limits, state.context, param, "messages")
    params = _params(req, n, budget, bool(req.logprobs), top)
    shape = Shape("chatcmpl", state.model_id)
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return _start(state, request, [ids], params, started, lambda job: _chat_stream(job, shape, params, usage))
    tally = await _collect(state, request, [ids], params, started)
    return JSONResponse(chat_response(shape, tally, params.logprobs, top))


async def completions(state: State, request: Request) -> Response:
    started = time.perf_counter()
    req = parse_body(CompletionRequest, await read_body(request.stream(), request.headers.get("content-length"),
                                                        state.limits.max_body_bytes))
    prompts = req.prompts()
    n = _common_checks(state, req, len(prompts))
    top = req.logprobs or 0
    check_top_logprobs(top, state.limits, "logprobs")
    ids = [_prompt_ids(state, p) for p in prompts]
    budget = min(new_tokens(req.max_tokens, len(x), state.limits, state.context, "max_tokens", "prompt") for x in ids)
    params = _params(req, n, budget, req.logprobs is not None, top)
    shape = Shape("cmpl", state.model_id)
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return _start(state, request, ids, params, started,
                      lambda job: _completion_stream(job, shape, params, usage))
    tally = await _collect(state, request, ids, params, started)
    return JSONResponse(completion_response(shape, tally, req.logprobs))


# ---- checks and parameters ------------------------------------------------------------------------

def _common_checks(state: State, req: _Sampling, prompts: int) -> int:
    """The model is the one served and n fits the limits; returns n."""
    if req.model != state.model_id:
        raise APIError(404, f"the model '{req.model}' does not exist here; this server serves '{state.model_id}' "
                            "(see GET /v1/models)", "invalid_request_error", "model", "model_not_found")
    n = req.n or 1
    check_n(n, prompts, state.limits)
    return n


def _prompt_ids(state: State, prompt: str | list[int]) -> list[int]:
    """A prompt's token ids (text tokenized as-is, no chat template); ids must be in the vocabulary."""
    if isinstance(prompt, str):
        ids = state.tokenizer(prompt)["input_ids"]
        if not ids:
            raise bad_request("prompt", "the prompt is empty: give at least one token of text")
        return ids
    vocab = len(state.tokenizer)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise bad_request("prompt", f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    return list(prompt)


def _params(req: _Sampling, n: int, budget: int, logprobs: bool, top: int) -> SamplingParams:
    """OpenAI's defaults where the request gives none: temperature 1, top_p 1."""
    return SamplingParams(max_tokens=budget, temperature=1.0 if req.temperature is None else req.temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=req.stops(), n=n,
                          logprobs=logprobs, top_logprobs=top if logprobs else 0)


# ---- running on the engine ------------------------------------------------------------------------

def _submit(state: State, ids: list[list[int]], params: SamplingParams, started: float) -> Job:
    """Admit the request (429 when full) and hand its prompts to the engine."""
    state.admission.enter()
    try:
        return Job(state.engine, ids, params, state.metrics, started)
    except BaseException as exc:
        state.admission.leave()
        if isinstance(exc, state.queue_full):
            raise state.admission.full() from None
        if isinstance(exc, state.closed):
            raise APIError(503, "the server is shutting down; retry against another instance or later",
                           "server_error", None, "shutting_down") from None
        if isinstance(exc, ValueError):  # a request the engine can never run (checked above, normally)
            raise bad_request(None, f"the engine cannot run this request: {exc}") from None
        raise


async def _collect(state: State, request: Request, ids: list[list[int]], params: SamplingParams, started: float):
    """Run a non-streaming request to its end (cancelled if the client goes away); its Tally."""
    job = _submit(state, ids, params, started)
    watcher = asyncio.create_task(cancel_on_disconnect(job, request.is_disconnected))
    try:
        async for _ in job.events():
            pass
    except EngineFailed as exc:
        raise APIError(500, f"generation failed: {exc}", "server_error", None, "engine_error") from None
    finally:
        watcher.cancel()
        state.admission.leave()
    return job.tally


class EventStream(StreamingResponse):
    """Server-sent events whose generator is always closed when the response ends, even when the
    client went away between two events (so its engine slots are freed at once)."""

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _start(state: State, request: Request, ids: list[list[int]], params: SamplingParams, started: float,
           events: Callable[[Job], AsyncIterator[str]]) -> Response:
    """Admit and submit now (so a full server answers 429, not a broken stream), then stream."""
    job = _submit(state, ids, params, started)

    async def body() -> AsyncIterator[str]:
        try:
            async for piece in events(job):
                yield piece
        except EngineFailed as exc:
            yield sse({"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None,
                                 "code": "engine_error"}})
        finally:
            if not job.tally.done:  # the client left before the end (events() may never have started)
                job.cancel()
            state.admission.leave()

    return EventStream(body())


async def _chat_stream(job: Job, shape: Shape, params: SamplingParams, usage: bool) -> AsyncIterator[str]:
    for i in range(job.tally.choices):
        yield sse(chat_chunk(shape, i, {"role": "assistant", "content": ""}, with_usage=usage))
    async for index, event in job.events():
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                lp = chat_logprobs(event.logprobs, params.top_logprobs) if params.logprobs else None
                yield sse(chat_chunk(shape, index, {"content": event.text}, logprobs=lp, with_usage=usage))
        else:
            yield sse(chat_chunk(shape, index, {}, _reason(event.finish_reason), with_usage=usage))
    if usage:
        yield sse(usage_chunk(shape, "chat.completion.chunk", job.tally))
    yield sse("[DONE]")


async def _completion_stream(job: Job, shape: Shape, params: SamplingParams, usage: bool) -> AsyncIterator[str]:
    offsets = [0] * job.tally.choices
    async for index, event in job.events():
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                lp = completion_logprobs(event.logprobs, params.top_logprobs, offsets[index]) \
                    if params.logprobs else None
                offsets[index] += sum(len(t.text) for t in event.logprobs)
                yield sse(completion_chunk(shape, index, event.text, logprobs=lp, with_usage=usage))
        else:
            yield sse(completion_chunk(shape, index, "", _reason(event.finish_reason), with_usage=usage))
    if usage:
        yield sse(usage_chunk(shape, "text_completion", job.tally))
    yield sse("[DONE]")


def _reason(finish_reason: str) -> str:
    """The engine's reasons are OpenAI's, except "cancelled" (only seen by a client that is gone)."""
    return "stop" if finish_reason == "cancelled" else finish_reason
