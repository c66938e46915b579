"""One admitted request on the generation engine: its prompts are submitted, the events of every
completion are merged into one stream (choice index = prompt number * n + completion index), and
what a response needs (text, logprobs, finish reasons, token counts) is tallied as they pass.

Leaving the stream early (the client went away, an error) cancels every unfinished completion, so
the engine frees their slots at its next decode step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from ..generation.requests import Delta, Finish, SamplingParams, TokenLogprob
from .metrics import Metrics


class EngineFailed(Exception):
    """A completion ended with finish_reason "error", or the engine raised."""


@dataclass
class Tally:
    """What the events of one request added up to, per choice index."""

    choices: int
    prompt_tokens: int = 0
    texts: list[str] = field(default_factory=list)
    logprobs: list[list[TokenLogprob]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self.texts = [""] * self.choices
        self.logprobs = [[] for _ in range(self.choices)]
        self.finish = [None] * self.choices

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class Job:
    """The engine handles of one request; iterate `events()` once."""

    def __init__(self, engine, prompts: list[list[int]], params: SamplingParams, metrics: Metrics, started: float):
        """Submit every prompt (a seeded request gives prompt k the seed seed + k * n, as
        Engine.generate does); if one submit fails, the ones before it are cancelled and it raises."""
        self.n = params.n
        self.metrics = metrics
        self.started = started
        self.handles = []
        try:
            for k, ids in enumerate(prompts):
                seeded = params if params.seed is None or k == 0 else replace(params, seed=params.seed + k * params.n)
                self.handles.append(engine.submit(ids, seeded))
        except BaseException:
            self.cancel()
            raise
        self.tally = Tally(len(prompts) * self.n, sum(h.prompt_tokens for h in self.handles))
        self._first = False

    def cancel(self) -> None:
        """Cancel every handle (the engine frees their slots at its next step)."""
        for handle in self.handles:
            handle.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Delta | Finish]]:
        """(choice index, event) of every completion, in arrival order; a finished request counts its
        tokens in the metrics, an unfinished one is cancelled."""
        try:
            async for k, event in self._merged():
                index = k * self.n + event.index
                self._count(index, event)
                yield index, event
            self.metrics.tokens(self.tally.prompt_tokens, self.tally.completion_tokens)
        finally:
            if not self.tally.done:
                self.cancel()

    def _count(self, index: int, event: Delta | Finish) -> None:
        tally = self.tally
        if isinstance(event, Delta):
            tally.texts[index] += event.text
            tally.logprobs[index] += event.logprobs
            if event.token_ids and not self._first:
                self._first = True
                self.metrics.first_token(time.perf_counter() - self.started)
        else:
            tally.finish[index] = event.finish_reason
            tally.completion_tokens += event.completion_tokens
            if event.finish_reason == "error":
                raise EngineFailed(f"generation failed for choice {index}")

    async def _merged(self) -> AsyncIterator[tuple[int, Delta | Finish]]:
        if len(self.handles) == 1:
            async with _closing(self.handles[0].aevents()) as events:
                async for event in events:
                    yield 0, event
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(k: int, handle) -> None:
            try:
                async with _closing(handle.aevents()) as events:
                    async for event in events:
                        await queue.put((k, event))
                await queue.put((k, None))
            except Exception as exc:  # handed to the consumer, which raises it
                await queue.put((k, exc))

        tasks = [asyncio.create_task(pump(k, h)) for k, h in enumerate(self.handles)]
        try:
            open_handles = len(tasks)
            while open_handles:
                k, item = await queue.get()
                if item is None:
                    open_handles -= 1
                elif isinstance(item, Exception):
                    raise EngineFailed(f"the engine failed: {item}") from item
                else:
                    yield k, item
        finally:
            for task in tasks:
                task.cancel()


@asynccontextmanager
async def _closing(events):
    """An engine's event iterator, closed on leaving (when it can be: async generators can)."""
    try:
        yield events
    finally:
        if hasattr(events, "aclose"):
            await events.aclose()


async def cancel_on_disconnect(job: Job, is_disconnected, every: float = 0.25) -> None:
    """Run beside a non-streaming request: cancel its job when the client goes away."""
    while not await is_disconnected():
        await asyncio.sleep(every)
    job.cancel()
