"""Sampling K answers per prompt on the generation engine, each stored the moment its request ends.

Each prompt is one engine request for the samples the store does not hold yet (`n` = how many).
A prompt's seed is derived from the run's seed and its token ids, and sample j of a prompt always
uses seed `prompt_seed + j` (the engine seeds completion i of a request with `seed + i`), so an
interrupted run that is resumed, or a rerun asking for more samples, produces exactly the samples
an uninterrupted run would have, and reuses every one already stored.

On Ctrl-C the requests in flight are cancelled and the engine is shut down; everything finished
is already in the store.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..generation.requests import SamplingParams
from .prompts import SynthPrompt
from .store import SampleStore, sample_key


@dataclass
class Job:
    """One prompt to sample: its token ids, its seed and the store key of each of its K samples."""

    prompt: SynthPrompt
    ids: list[int]
    seed: int
    keys: list[str]


@dataclass
class SampleStats:
    """What sampling did: samples generated now and reused from the store, time, tokens, skipped prompts."""

    generated: int = 0
    reused: int = 0
    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # prompt id -> why it was not sampled

    @property
    def samples_per_s(self) -> float | None:
        return round(self.generated / self.seconds, 3) if self.seconds > 0 and self.generated else None

    @property
    def tokens_per_s(self) -> float | None:
        return round(self.tokens / self.seconds, 1) if self.seconds > 0 and self.tokens else None


def settings_of(params: SamplingParams) -> dict[str, Any]:
    """The sampling settings that go into a sample's key (everything that changes its text)."""
    return {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
            "max_tokens": params.max_tokens, "seed": params.seed, "stop": list(params.stop)}


def make_jobs(prompts: list[SynthPrompt], prompt_ids: list[list[int]], samples: int, params: SamplingParams,
              model: str) -> list[Job]:
    """A Job per prompt with its seed and the keys of its `samples` samples."""
    settings = settings_of(params)
    return [Job(prompt, ids, prompt_seed(params.seed, ids), [sample_key(model, ids, settings, j)
                                                             for j in range(samples)])
            for prompt, ids in zip(prompts, prompt_ids)]


def prompt_seed(seed: int | None, ids: list[int]) -> int:
    """A prompt's sampling seed: from the run's seed and the prompt's token ids (below 2**60, so
    `+ j` for sample j stays in range); its samples never depend on which other prompts run."""
    return int(hashlib.sha256(f"{seed}|{ids}".encode()).hexdigest()[:15], 16)


def _missing_runs(job: Job, store: SampleStore) -> list[tuple[int, int]]:
    """(first index, count) of each run of consecutive samples the store does not hold."""
    runs: list[tuple[int, int]] = []
    for j, key in enumerate(job.keys):
        if key in store:
            continue
        if runs and runs[-1][0] + runs[-1][1] == j:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((j, 1))
    return runs


def sample_all(engine, jobs: list[Job], params: SamplingParams, store: SampleStore,
               progress: Callable[..., None] | None = None) -> SampleStats:
    """Generate every sample of `jobs` that `store` lacks and store it; returns the stats.

    engine: a generation Engine (submit/step/shutdown), stepped in this thread (the one that loaded
    the model: see Engine.run); `progress(n)` is called as n samples are stored.
    A prompt the engine refuses (too long for the model) is skipped with the reason, not fatal.
    """
    stats = SampleStats(reused=sum(k in store for job in jobs for k in job.keys))
    inflight: list[tuple[Any, Job, int]] = []
    t0 = time.perf_counter()
    try:
        for job in jobs:
            for start, count in _missing_runs(job, store):
                try:
                    handle = engine.submit(job.ids, replace(params, n=count, seed=job.seed + start), stream=False)
                except ValueError as exc:
                    stats.skipped[job.prompt.id] = f"not_sampled: {exc}"
                    break
                stats.requests += 1
                inflight.append((handle, job, start))
        while inflight:
            done = [entry for entry in inflight if entry[0].done.is_set()]
            if not done:
                if not engine.step():  # nothing to step: the last requests are ending
                    inflight[0][0].done.wait(0.05)
                continue
            for entry in done:
                inflight.remove(entry)
                _store(entry, store, stats, progress)
    except BaseException:  # Ctrl-C or a failure: nothing half-done stays in flight
        for handle, _, _ in inflight:
            handle.cancel()
        raise
    finally:
        engine.shutdown(grace_s=0)
        stats.seconds = time.perf_counter() - t0
    return stats


def _store(entry: tuple[Any, Job, int], store: SampleStore, stats: SampleStats,
           progress: Callable[..., None] | None) -> None:
    """Put a finished request's samples in the store (a failed request ends the run)."""
    handle, job, start = entry
    if handle.error is not None:
        raise RuntimeError(f"generation failed on prompt {job.prompt.id}: {handle.error}") from handle.error
    records = [{"key": job.keys[start + i], "prompt_id": job.prompt.id, "index": start + i, "text": c.text,
                "finish_reason": c.finish_reason, "tokens": len(c.token_ids)}
               for i, c in enumerate(handle.completions())]
    store.put_many(records)
    stats.generated += len(records)
    stats.tokens += sum(r["tokens"] for r in records)
    if progress is not None:
        progress(len(records))
