"""The files a synth run writes, one row builder each, all written atomically.

    sft.jsonl      per kept prompt, its best accepted answer (RAFT): a `messages` row with `id`, `origin`
                   (where the prompt came from) and `synth` (source, verifier, model, sample, verdict,
                   accepted/samples); tasks rows also carry `task` and `answer`, as generated task data does
    pairs.jsonl    TRL conversational preference rows: `prompt` (turns), `chosen` and `rejected` (one
                   assistant turn each), `chosen_verdict`, `rejected_verdict`, `id`, `origin`, `synth`;
                   `tunesmith` reads them as format `preference`
    samples.jsonl  every sample of every sampled prompt with its verdict and what it became (chosen,
                   rejected or nothing), and the prompt's decision
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_jsonl
from .prompts import SynthPrompt
from .raft import Decision, Sample


def _about(prompt: SynthPrompt, model: str) -> dict[str, Any]:
    return {"source": prompt.source, "verifier": prompt.verifier, "model": model}


def sft_row(prompt: SynthPrompt, decision: Decision, samples: list[Sample], model: str) -> dict[str, Any]:
    """The chosen answer as a messages row with its provenance."""
    chosen = decision.chosen
    assert chosen is not None
    row: dict[str, Any] = {"messages": [*prompt.messages, {"role": "assistant", "content": chosen.text}],
                           "id": prompt.id, "origin": prompt.origin}
    if prompt.verifier == "tasks":
        row.update(task=prompt.spec["task"], answer=prompt.spec["answer"])
    row["synth"] = {**_about(prompt, model), "sample": chosen.index, "samples": len(samples),
                    "accepted": sum(bool(s.passed) for s in samples), "verdict": chosen.verdict}
    return row


def pair_row(prompt: SynthPrompt, decision: Decision, model: str) -> dict[str, Any]:
    """(chosen, rejected) as a TRL conversational preference row with both verdicts."""
    chosen, rejected = decision.chosen, decision.rejected
    assert chosen is not None and rejected is not None
    return {"prompt": prompt.messages, "chosen": [{"role": "assistant", "content": chosen.text}],
            "rejected": [{"role": "assistant", "content": rejected.text}],
            "chosen_verdict": chosen.verdict, "rejected_verdict": rejected.verdict, "id": prompt.id,
            "origin": prompt.origin,
            "synth": {**_about(prompt, model), "chosen_sample": chosen.index, "rejected_sample": rejected.index}}


def sample_rows(prompt: SynthPrompt, decision: Decision, samples: list[Sample]) -> list[dict[str, Any]]:
    """One row per sample: the prompt, the text, its verdict and what became of it."""
    role = {}
    if decision.chosen is not None:
        role[decision.chosen.index] = "chosen"
    if decision.rejected is not None:
        role[decision.rejected.index] = "rejected"
    return [{"prompt_id": prompt.id, "source": prompt.source, "origin": prompt.origin, "verifier": prompt.verifier,
             "prompt": prompt.messages, "reference": prompt.reference, "sample": s.index, "text": s.text,
             "finish_reason": s.finish_reason, "tokens": s.tokens, "passed": s.passed, "verdict": s.verdict,
             "role": role.get(s.index), "dropped": decision.reason} for s in samples]


def write_outputs(out: Path, prompts: list[SynthPrompt], scored: dict[str, list[Sample]],
                  decisions: dict[str, Decision], model: str) -> dict[str, int]:
    """Write sft.jsonl, pairs.jsonl and samples.jsonl for the sampled prompts; returns the row counts."""
    sampled = [p for p in prompts if p.id in scored]
    n_sft = write_jsonl(out / "sft.jsonl", (sft_row(p, decisions[p.id], scored[p.id], model) for p in sampled
                                            if decisions[p.id].chosen is not None))
    n_pairs = write_jsonl(out / "pairs.jsonl", (pair_row(p, decisions[p.id], model) for p in sampled
                                                if decisions[p.id].rejected is not None))
    n_samples = write_jsonl(out / "samples.jsonl", (row for p in sampled
                                                    for row in sample_rows(p, decisions[p.id], scored[p.id])))
    return {"sft": n_sft, "pairs": n_pairs, "samples": n_samples}
