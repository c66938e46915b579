"""The generation engine: requests join and leave one running batch between decode steps.

Each step, in one thread (the caller of `run()`, the engine's own after `start()`, else the caller of
`generate` or `step`):
  1. completions of cancelled requests end ("cancelled");
  2. queued requests are admitted while the batch has rows for all their `n` completions; their
     prompts are prefilled together, packed into one unpadded row (one forward per PREFILL_TOKENS;
     a prompt once, whatever its `n`), and their first tokens are sampled;
  3. rows that ended leave their KV slots, and joined rows' prefill caches are copied into free
     slots of their length class's pool, once per completion (kv.SlotCache: nothing else moves);
  4. one decode forward for every row; each row's token goes to its completion (sequence.py).

    engine = Engine(model, tokenizer); engine.start()
    handle = engine.submit(prompt_ids, SamplingParams(max_tokens=64))
    for event in handle.events(): ...
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..data.chat import end_of_turn_ids
from .handle import EngineClosed, QueueFull, RequestHandle
from .kv import PromptKV, SlotCache
from .requests import Completion, Finish, SamplingParams
from .runner import ModelRunner
from .sampling import choose
from .sequence import Sequence

PREFILL_TOKENS = 2048  # prompt tokens packed into one prefill forward at most (a longer prompt goes alone)


def prefill_groups(handles: list[RequestHandle], budget: int) -> list[list[RequestHandle]]:
    """Consecutive groups of requests whose prompts fit `budget` tokens together (in arrival order)."""
    groups: list[list[RequestHandle]] = []
    used = budget
    for handle in handles:
        if used + handle.prompt_tokens > budget:
            groups.append([])
            used = 0
        groups[-1].append(handle)
        used += handle.prompt_tokens
    return groups


@dataclass
class EngineStats:
    """Counters; `running` and `queued` count requests, `sequences` the rows of the running batch."""

    running: int
    queued: int
    prompt_tokens: int
    generated_tokens: int
    steps: int
    requests_finished: int
    sequences: int = 0


class Engine:
    """Continuous-batching generation over one transformers causal LM (see the module docstring)."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 256,
                 stop_token_ids: set[int] | None = None):
        self.runner = ModelRunner(model)
        self.tokenizer = tokenizer
        if stop_token_ids is None:
            stop_token_ids = end_of_turn_ids(tokenizer) if tokenizer is not None else set()
        self.stop_ids = set(stop_token_ids)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cv = threading.Condition()  # guards everything below up to _seqs
        self._waiting: deque[RequestHandle] = deque()
        self._running: set[RequestHandle] = set()
        self._closed = self._stop = False
        self._counts = dict(prompt_tokens=0, generated_tokens=0, steps=0, requests_finished=0)
        self._step_lock = threading.Lock()  # one thread steps at a time; it owns _seqs and _cache
        self._seqs: list[Sequence] = []  # slot r of the cache is _seqs[r]
        self._cache: SlotCache | None = None
        self._thread: threading.Thread | None = None  # start()'s thread
        self._runner: threading.Thread | None = None  # the thread inside run(), if any

    # -- public API ----------------------------------------------------------------------------
    def start(self) -> None:
        """Run decode steps in a background thread whenever there is work."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self.run, args=(lambda: False,), name="tunesmith-engine",
                                            daemon=True)
            self._thread.start()

    def run(self, until: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Run decode steps in the calling thread whenever there is work, until `until()` is true
        (checked at least every `poll_s` seconds) or shutdown() has run. Other threads submit and read
        as with start(), whose thread runs this too.

        Prefer this to start() in the thread that loaded the model: torch's OpenMP runtime (libgomp)
        keeps a thread team for every thread that has run a parallel op, and once two teams exist
        on a machine with fewer cores than their threads, it stops spinning between parallel
        regions and wakes its workers through the kernel each time. On this 2-core machine that made
        a parallel elementwise op 4x slower (130 vs 30 us on 128 x 1536) and a bf16 decode step of
        16 rows 1.4x slower (62 vs 45 ms) when the engine stepped in its own thread.
        """
        self._runner = threading.current_thread()
        try:
            while not until():
                with self._cv:
                    if self._stop:  # shutdown() has run
                        return
                    if not self._cv.wait_for(lambda: self._has_work() or self._stop, timeout=poll_s):
                        continue
                with self._step_lock:
                    self._guarded_step()
        finally:
            self._runner = None

    def step(self) -> bool:
        """Run one step in the calling thread if there is work (for callers that neither start()
        nor run()); False when there was nothing to do."""
        with self._cv:
            if not self._has_work():
                return False
        with self._step_lock:
            self._guarded_step()
        return True

    def submit(self, prompt_ids: list[int], params: SamplingParams, stream: bool = True) -> RequestHandle:
        """Queue a request (thread-safe). QueueFull when the batch and queue are full, EngineClosed
        after shutdown(), ValueError for a request that can never run."""
        self._validate(prompt_ids, params)
        handle = RequestHandle(f"gen-{uuid.uuid4().hex[:16]}", list(prompt_ids), params, self._cancel, stream)
        with self._cv:
            if self._closed:
                raise EngineClosed("the generation engine is shutting down")
            if len(self._running) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self._running)} requests running and {len(self._waiting)} queued")
            self._waiting.append(handle)
            self._cv.notify_all()
        return handle

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 progress: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """Complete every prompt (result[i] holds params.n completions); blocks until all are done.

        Prompts are fed as the queue allows. A seeded `params` gives prompt i the seed
        `seed + i * n`, so identical prompts get different samples and results do not depend on
        batching. Steps run in this thread unless start() was called. Raises a request's error.
        """
        handles: list[RequestHandle] = []
        results: list[list[Completion] | None] = [None] * len(prompts)
        finished = 0
        while finished < len(prompts):
            while len(handles) < len(prompts):
                i = len(handles)
                p = params if params.seed is None else replace(params, seed=params.seed + i * params.n)
                try:
                    handles.append(self.submit(prompts[i], p, stream=False))
                except QueueFull:
                    break
            if self._threaded():
                with self._cv:
                    self._cv.wait(timeout=0.5)
            else:
                with self._step_lock:
                    self._step()
            newly = 0
            for i, h in enumerate(handles):
                if results[i] is None and h.done.is_set():
                    if h.error is not None:
                        for other in handles:
                            other.cancel()
                        raise RuntimeError(f"generation failed: {h.error}") from h.error
                    results[i] = h.completions()
                    newly += 1
            finished += newly
            if newly and progress is not None:
                progress(newly)
        return results  # type: ignore[return-value]

    def stats(self) -> EngineStats:
        with self._cv:
            return EngineStats(len(self._running), len(self._waiting), sequences=len(self._seqs), **self._counts)

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Take no more requests; let accepted ones run up to `grace_s` seconds; cancel the rest."""
        with self._cv:
            self._closed = True
        deadline = time.monotonic() + grace_s
        if self._threaded():
            with self._cv:
                self._cv.wait_for(lambda: not self._has_work(), timeout=grace_s)
        else:
            while self._has_work() and time.monotonic() < deadline:
                with self._step_lock:
                    self._step()
        with self._step_lock:
            with self._cv:
                waiting = list(self._waiting)
                self._waiting.clear()
            for handle in waiting:
                self._end_unstarted(handle, "cancelled")
            for seq in self._seqs:
                seq.finish("cancelled")
            self._retire(self._seqs)
            self._seqs, self._cache = [], None
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    # -- scheduling ------------------------------------------------------------------------------
    def _validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise ValueError("empty prompt: at least one token is needed")
        if not 1 <= params.n <= self.max_batch:
            raise ValueError(f"n={params.n}: must be between 1 and the engine's max_batch ({self.max_batch})")
        if params.max_tokens < 1:
            raise ValueError(f"max_tokens={params.max_tokens}: must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.top_k < 0 or params.top_logprobs < 0:
            raise ValueError("temperature must be >= 0, top_p in (0, 1], top_k and top_logprobs >= 0")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        limit = self.runner.max_len
        if limit is not None and len(prompt_ids) >= limit:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens: the model reads at most {limit}")

    def _threaded(self) -> bool:
        return (self._thread is not None and self._thread.is_alive()) or self._runner is not None

    def _has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def _guarded_step(self) -> None:
        try:
            self._step()
        except Exception as exc:  # e.g. out of memory while growing the cache
            self._fail_all(exc)

    def _cancel(self, handle: RequestHandle) -> None:
        """A handle's cancel(): a queued request ends now; a running one at the next step."""
        with self._cv:
            queued = handle in self._waiting
            if queued:
                self._waiting.remove(handle)
            self._cv.notify_all()
        if queued:
            self._end_unstarted(handle, "cancelled")

    def _end_unstarted(self, handle: RequestHandle, reason: str) -> None:
        for i in range(handle.params.n):
            handle.push(Finish(i, reason, 0))
        with self._cv:
            self._running.discard(handle)
            self._counts["requests_finished"] += 1
            self._cv.notify_all()

    def _admit(self) -> list[RequestHandle]:
        free = self.max_batch - sum(s.finished is None for s in self._seqs)
        admitted = []
        with self._cv:
            while self._waiting and self._waiting[0].params.n <= free:
                handle = self._waiting.popleft()
                free -= handle.params.n
                self._running.add(handle)
                admitted.append(handle)
        return admitted

    @torch.inference_mode()
    def _step(self) -> None:
        for seq in self._seqs:
            if seq.handle.cancelled:
                seq.finish("cancelled")
        self._leave()
        for group in prefill_groups(self._admit(), PREFILL_TOKENS):
            for seqs, kv in self._prefill(group):
                for seq in seqs:
                    if seq.finished is None:
                        if self._cache is None:
                            self._cache = self.runner.new_cache(kv.cache, self.max_batch)
                        self._seqs.insert(self._cache.add(kv), seq)
        if self._seqs:
            self._decode()
        with self._cv:
            self._cv.notify_all()

    def _leave(self) -> None:
        """Free the slots of ended rows: the last row of the pool moves into each freed slot (as in
        the cache)."""
        ended = []
        for r in range(len(self._seqs) - 1, -1, -1):  # from the end: rows after r are all live
            if self._seqs[r].finished is not None:
                ended.append(self._seqs[r])
                moved = self._cache.remove(r)
                self._seqs[r] = self._seqs[moved]
                del self._seqs[moved]
        self._retire(ended)

    def _prefill(self, handles: list[RequestHandle]) -> list[tuple[list[Sequence], PromptKV | None]]:
        """One packed forward for the prompts of `handles`; sample each completion's first token.
        If the forward fails, each prompt is tried alone, so that only a bad request ends in error."""
        try:
            logits, kvs = self.runner.prefill([h.prompt_ids for h in handles])  # [k, V]
        except Exception as exc:  # a bad request must not take the engine down
            if len(handles) > 1:
                return [done for h in handles for done in self._prefill([h])]
            return [(self._fail_request(handles[0], exc), None)]
        out = []
        for j, (handle, kv) in enumerate(zip(handles, kvs)):
            seqs = [Sequence(handle, i, self.tokenizer, self.stop_ids, self.runner.max_len)
                    for i in range(handle.params.n)]
            try:
                choices = choose(logits[j:j + 1].expand(len(seqs), -1), [s.sampler for s in seqs])
            except Exception as exc:
                out.append((self._fail_request(handle, exc, seqs), None))
                continue
            for s, c in zip(seqs, choices):
                s.advance(c)
            with self._cv:
                self._counts["prompt_tokens"] += handle.prompt_tokens
                self._counts["generated_tokens"] += len(seqs)
            self._retire(seqs)
            out.append((seqs, kv))
        return out

    def _fail_request(self, handle: RequestHandle, exc: Exception,
                      seqs: list[Sequence] | None = None) -> list[Sequence]:
        """End every completion of one request with "error" (the request's `error` says why)."""
        if seqs is None:
            seqs = [Sequence(handle, i, self.tokenizer, self.stop_ids, self.runner.max_len)
                    for i in range(handle.params.n)]
        handle.error = exc
        for s in seqs:
            s.finish("error")
        self._retire(seqs)
        return seqs

    def _decode(self) -> None:
        order = self.runner.sort_rows(self._cache)
        if order is not None:  # the cache moved its rows: slot r holds what slot order[r] held
            self._seqs = [self._seqs[r] for r in order]
        tokens = torch.tensor([s.last for s in self._seqs], dtype=torch.long, device=self.runner.device)
        try:
            logits = self.runner.decode(tokens, self._cache)  # [B, V]
            choices = choose(logits, [s.sampler for s in self._seqs])
        except Exception as exc:
            self._fail_all(exc)
            return
        for s, c in zip(self._seqs, choices):
            s.advance(c)
        with self._cv:
            self._counts["steps"] += 1
            self._counts["generated_tokens"] += len(self._seqs)
        self._retire(self._seqs)
        if all(s.finished is not None for s in self._seqs) and not self._waiting:
            self._seqs, self._cache = [], None  # free the cache now, not at the next request

    def _fail_all(self, exc: Exception) -> None:
        """End every running completion with "error" (the request's `error` says why)."""
        for s in self._seqs:
            s.handle.error = exc
            s.finish("error")
        self._retire(self._seqs)
        self._seqs, self._cache = [], None

    def _retire(self, seqs: list[Sequence]) -> None:
        """Count requests whose last completion just ended."""
        done = {s.handle for s in seqs if s.handle.done.is_set()}
        with self._cv:
            for handle in done & self._running:
                self._running.discard(handle)
                self._counts["requests_finished"] += 1

