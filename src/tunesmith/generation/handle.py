"""A submitted request as its caller sees it: events as they happen (blocking or asyncio), the whole
completions when done, and cancel().

The engine's thread pushes events; a caller reads them with `events()` (blocking) or `aevents()`
(asyncio: the engine hands each event to the consumer's event loop with `call_soon_threadsafe`).
Leaving either iterator before the last Finish (a client that went away) cancels the request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import AsyncIterator, Callable, Iterator

from .requests import Completion, Delta, Event, Finish, SamplingParams, TokenLogprob


class QueueFull(Exception):
    """The running batch and the queue are full; try again later (HTTP 429)."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


class RequestHandle:
    """One request: `id`, `prompt_tokens`, its events, its completions once done, and `cancel()`."""

    def __init__(self, rid: str, prompt_ids: list[int], params: SamplingParams,
                 on_cancel: Callable[["RequestHandle"], None], stream: bool = True):
        self.id = rid
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.params = params
        self.cancelled = False  # set by cancel(); the engine ends the request at its next step
        self.error: BaseException | None = None  # why it finished with "error"
        self.done = threading.Event()  # set after the last Finish
        self._on_cancel = on_cancel
        self._stream = stream  # False: keep only the completions (batch callers), not the events
        self._cv = threading.Condition()
        self._queue: deque[Event] = deque()
        self._sink: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        n = params.n
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._ids: list[list[int]] = [[] for _ in range(n)]
        self._logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self._reasons: list[str | None] = [None] * n
        self._finished = 0

    # -- engine side -------------------------------------------------------------------------
    def push(self, event: Event) -> None:
        """Record an event and hand it to the reader (called by the engine's thread)."""
        if isinstance(event, Delta):
            self._texts[event.index].append(event.text)
            self._ids[event.index].extend(event.token_ids)
            self._logprobs[event.index].extend(event.logprobs)
        else:
            self._reasons[event.index] = event.finish_reason
            self._finished += 1
        if self._stream:
            with self._cv:
                if self._sink is None:
                    self._queue.append(event)
                    self._cv.notify_all()
                else:
                    loop, queue = self._sink
                    try:
                        loop.call_soon_threadsafe(queue.put_nowait, event)
                    except RuntimeError:  # the reader's event loop is closed: nobody is listening
                        self.cancelled = True
        if self._finished == self.params.n:
            self.done.set()

    # -- caller side -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating; each unfinished completion ends with Finish "cancelled"."""
        if not self.done.is_set():
            self.cancelled = True
            self._on_cancel(self)

    def completions(self) -> list[Completion]:
        """The n completions, in index order (call after `done`)."""
        return [Completion("".join(self._texts[i]), list(self._ids[i]), self._reasons[i] or "cancelled",
                           self.prompt_tokens, list(self._logprobs[i])) for i in range(self.params.n)]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come, ending after the last Finish. TimeoutError when none comes within
        `timeout` seconds (the request goes on; call events() again to keep reading)."""
        finishes = 0
        try:
            while finishes < self.params.n:
                with self._cv:
                    if not self._cv.wait_for(lambda: self._queue, timeout):
                        raise TimeoutError(f"request {self.id}: no event within {timeout} s")
                    event = self._queue.popleft()
                finishes += isinstance(event, Finish)
                yield event
        except GeneratorExit:
            self.cancel()
            raise

    async def aevents(self) -> AsyncIterator[Event]:
        """Events as they come, for asyncio callers (FastAPI); ends after the last Finish."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._cv:
            while self._queue:
                queue.put_nowait(self._queue.popleft())
            self._sink = (asyncio.get_running_loop(), queue)
        finishes = 0
        try:
            while finishes < self.params.n:
                event = await queue.get()
                finishes += isinstance(event, Finish)
                yield event
        except (GeneratorExit, asyncio.CancelledError):
            self.cancel()
            raise
