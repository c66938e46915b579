"""The --prompts sources, collected: generated (ifeval, tasks) and the user's files, each limited, deduplicated.

A source is "ifeval", "tasks" or a file, folder or glob (synth.userdata). A prompt that repeats an
earlier one (same turns) is dropped and counted as a duplicate of the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..data.example import Reject
from ..data.load import DEFAULT_MAX_ROW_BYTES
from ..data.tasks import HELD_OUT_TASKS
from ..errors import UsageError
from .generated import ifeval_prompts, task_prompts
from .prompts import SynthPrompt
from .userdata import read_prompt_rows

GENERATED = ("ifeval", "tasks")
GENERATED_LIMIT = 100  # prompts a generated source makes when no limit is given


@dataclass
class Collected:
    """Every source's prompts (in source order), the bad rows of the files, and counts per source."""

    prompts: list[SynthPrompt] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: list[dict[str, str]] = field(default_factory=list)


def collect(sources: list[str], limit: int | None = None, seed: int = 0, eval_seed: int = 0,
            eval_tasks_n: int = HELD_OUT_TASKS, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Collected:
    """Read or generate every source's prompts (at most `limit` each; a generated source makes
    GENERATED_LIMIT without one)."""
    if not sources:
        raise UsageError("--prompts: give at least one source: ifeval, tasks, or a file, folder or glob")
    out = Collected()
    seen: dict[str, str] = {}
    for spec in dict.fromkeys(sources):
        counts: dict[str, Any] = {"kind": "generated" if spec in GENERATED else "file"}
        if spec == "ifeval":
            prompts = ifeval_prompts(limit or GENERATED_LIMIT, seed)
        elif spec == "tasks":
            prompts = task_prompts(limit or GENERATED_LIMIT, seed, eval_seed, eval_tasks_n)
        else:
            read = read_prompt_rows(spec, limit, max_row_bytes)
            prompts = read.prompts
            out.rejects += read.rejects
            counts.update(rows=read.total, rejected=len(read.rejects), files=read.files, skipped=read.skipped)
        kept = []
        for p in prompts:
            key = json.dumps(p.messages, sort_keys=True)
            if key in seen:
                out.duplicates.append({"prompt_id": p.id, "source": spec, "same_as": seen[key]})
                continue
            seen[key] = p.id
            kept.append(p)
        counts.update(prompts=len(kept), duplicates=len(prompts) - len(kept),
                      verifiers=_count(p.verifier for p in kept))
        out.per_source[spec] = counts
        out.prompts += kept
    return out


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts
