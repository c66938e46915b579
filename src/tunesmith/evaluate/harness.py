"""The evaluation harness: one table of suites, each returning a result with per-item records.

Every suite takes the model, its tokenizer and an EvalContext, and returns a dict with at least
`suite`, `score` (higher is better except for `loss`), `n` and `records`, so any number can be
audited line by line in eval/<suite>.json. `data` is the user's own held-out conversations, scored
by generation (evaluate.owndata); `loss` scores the same conversations (or the task items) by loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import ui
from ..data.chat import TokenizedExample
from ..data.example import Example
from ..data.packing import MAX_TOKENS_PER_ROW
from ..data.tasks import TaskItem
from ..errors import UsageError


@dataclass
class EvalContext:
    """What the suites evaluate on, and how generation is bounded."""

    task_items: list[TaskItem] = field(default_factory=list)
    loss_samples: list[TokenizedExample] = field(default_factory=list)
    data_items: list[Example] = field(default_factory=list)  # the user's held-out conversations (data suite)
    match: str = "normalized"  # the data suite's matcher (evaluate.owndata)
    data_max_new_tokens: int = 256  # for the data suite
    max_new_tokens: int = 32  # for short-answer suites (tasks, robustness)
    long_max_new_tokens: int = 512  # for open-ended suites (ifbench, ifeval, humaneval)
    batch_size: int = 32
    limit: int | None = None  # items per suite (None: all)
    ifeval_items: int = 100
    guard_items: int = 100  # the general-ability guard's IFEval-style items (evaluate.guard)
    guard_max_new_tokens: int = 384
    guard_reference: list[str] | None = None  # the base model's guard answers (None: the model is the base)
    humaneval_samples: int = 0  # >0: also sample this many completions per problem for pass@k
    humaneval_temperature: float = 0.8
    seed: int = 0
    max_tokens_per_row: int = MAX_TOKENS_PER_ROW
    loss_chunk_size: int = 512


def _limited(items: list, limit: int | None) -> list:
    return items[:limit] if limit else items


def _progress(label: str, suite: str, n: int):
    return ui.progress_bar(f"eval {label}: {suite}", n, "prompts")


def suite_tasks(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from .suites import eval_tasks

    items = _limited(ctx.task_items, ctx.limit)
    with _progress(label, "tasks", len(items)) as adv:
        return eval_tasks(model, tok, items, ctx.max_new_tokens, ctx.batch_size, progress=adv)


def suite_loss(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from .suites import eval_loss

    return eval_loss(model, _limited(ctx.loss_samples, ctx.limit), ctx.max_tokens_per_row, ctx.loss_chunk_size)


def suite_robustness(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from ..evalsets.phrasings import n_phrasings
    from .robustness import eval_robustness

    items = _limited(ctx.task_items, ctx.limit)
    with _progress(label, "robustness", len(items) * n_phrasings()) as adv:
        return eval_robustness(model, tok, items, ctx.max_new_tokens, ctx.batch_size, progress=adv)


def suite_data(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from .owndata import eval_owndata

    items = _limited(ctx.data_items, ctx.limit)
    with _progress(label, "data", len(items)) as adv:
        return eval_owndata(model, tok, items, ctx.match, ctx.data_max_new_tokens, ctx.batch_size, progress=adv)


def _chat_generate(model, tok, prompts: list[str], ctx: EvalContext, label: str, suite: str, **kw) -> list[str]:
    from .generate import generate

    with _progress(label, suite, len(prompts)) as adv:
        return generate(model, tok, [[{"role": "user", "content": p}] for p in prompts],
                        max_new_tokens=ctx.long_max_new_tokens, batch_size=ctx.batch_size, progress=adv, **kw)


def suite_ifbench(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from ..evalsets.ifbench import load_ifbench_prompts
    from .ifbench import score_ifbench

    items = load_ifbench_prompts(ctx.limit)
    return score_ifbench(items, _chat_generate(model, tok, [it["prompt"] for it in items], ctx, label, "ifbench"))


def suite_ifeval(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from ..evalsets.ifeval import ifeval_items
    from .ifeval import score_ifeval

    items = ifeval_items(ctx.limit or ctx.ifeval_items, ctx.seed)
    return score_ifeval(items, _chat_generate(model, tok, [it["prompt"] for it in items], ctx, label, "ifeval"))


def suite_guard(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from ..evalsets.ifeval import guard_items
    from .guard import eval_guard

    items = guard_items(min(ctx.limit, ctx.guard_items) if ctx.limit else ctx.guard_items)
    bounded = EvalContext(long_max_new_tokens=ctx.guard_max_new_tokens, batch_size=ctx.batch_size)
    return eval_guard(model, tok, items, lambda prompts: _chat_generate(model, tok, prompts, bounded, label, "guard"),
                      ctx.guard_reference, ctx.max_tokens_per_row, ctx.loss_chunk_size)


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the complete function in a "
                         "```python code block.\n\n```python\n{prompt}```")


def suite_humaneval(model, tok, ctx: EvalContext, label: str) -> dict[str, Any]:
    from ..evalsets.humaneval import load_humaneval
    from .humaneval import extract_code, score_humaneval

    problems = load_humaneval(ctx.limit)
    prompts = [HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]) for p in problems]
    greedy = _chat_generate(model, tok, prompts, ctx, label, "humaneval")
    completions = [[extract_code(g, p)] for g, p in zip(greedy, problems)]
    ks: tuple[int, ...] = (1,)
    if ctx.humaneval_samples > 0:  # pass@k from sampled completions (the unbiased estimator)
        n = ctx.humaneval_samples
        sampled = _chat_generate(model, tok, [p for p in prompts for _ in range(n)], ctx, label, "humaneval sampled",
                                 temperature=ctx.humaneval_temperature, top_p=0.95, seed=ctx.seed)
        completions = [[extract_code(s, p) for s in sampled[i * n:(i + 1) * n]] for i, p in enumerate(problems)]
        ks = tuple(k for k in (1, 5, 10) if k <= n)
    result = score_humaneval(problems, completions, ks=ks)
    if ctx.humaneval_samples > 0:  # greedy pass@1 too, from the greedy completions
        greedy_result = score_humaneval(problems, [[extract_code(g, p)] for g, p in zip(greedy, problems)], ks=(1,))
        result["greedy_pass@1"] = greedy_result["score"]
    for rec, raw in zip(result["records"], greedy):
        rec["raw_output"] = raw
    return result


SUITES: dict[str, Callable[..., dict[str, Any]]] = {
    "tasks": suite_tasks,
    "loss": suite_loss,
    "data": suite_data,
    "robustness": suite_robustness,
    "ifbench": suite_ifbench,
    "ifeval": suite_ifeval,
    "humaneval": suite_humaneval,
    "guard": suite_guard,
}
LOWER_IS_BETTER = {"loss"}


def parse_suites(text: str | list[str]) -> list[str]:
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise UsageError(f"unknown suite(s) {unknown or text!r}; choose from: {', '.join(SUITES)}")
    return names


def run_suites(model, tok, suites: list[str], ctx: EvalContext, label: str) -> dict[str, Any]:
    """Run each suite; adds wall time per suite to its result."""
    results = {}
    for name in parse_suites(suites):
        t0 = time.perf_counter()
        results[name] = SUITES[name](model, tok, ctx, label)
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    return results
