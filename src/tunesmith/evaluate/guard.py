"""The general-ability guard: does tuning keep what the model could already do?

Two measures on one small fixed set of general prompts (IFEval-style requests about everyday topics,
`evalsets.ifeval.guard_items`), so that they cost one generation pass per model:

* instruction following: the model's answers scored with the IFEval checkers (prompt level, strict
  and loose; `score` is prompt-level loose, the measure the guard's warning uses);
* drift: the loss of the model on the *reference* answers to the same prompts, per answer token. The
  reference is the base model's own greedy answers: evaluating the base, they are its outputs just
  generated; evaluating the tuned model, they are the base's (given in `reference`). The base finds
  its own answers likely; a tuned model that drifted away from the base's behaviour (its length,
  its style) does not, and the loss rises. The end-of-turn token is left out of the loss, so an answer
  the base cut at the token cap weighs the same as one it finished.
"""

from __future__ import annotations

from typing import Any, Callable

from ..data.chat import answer_sample
from ..data.packing import MAX_TOKENS_PER_ROW
from ..errors import UserError
from .generate import prompt_ids
from .ifeval import score_ifeval
from .suites import eval_loss

GUARD_SOURCE = "guard"


def answer_loss_samples(tokenizer, prompts: list[str], answers: list[str]):
    """Each answer after its prompt's inference tokens, labels on the answer, no end-of-turn label; sample i
    has line i + 1 (source "guard"), so its loss maps back to item i (empty answers are left out)."""
    samples = [answer_sample(prompt_ids(tokenizer, [{"role": "user", "content": p}]),
                             tokenizer(a, add_special_tokens=False).input_ids, None, GUARD_SOURCE, i + 1)
               for i, (p, a) in enumerate(zip(prompts, answers))]
    return [s for s in samples if s.n_trainable > 0]


def score_guard(items: list[dict[str, Any]], answers: list[str], losses: dict[int, float] | None
                ) -> dict[str, Any]:
    """The guard's result: IFEval scores of `answers` (score = prompt-level loose) and, per item, the
    loss on the reference answer (`losses`: item index -> loss; items without one get None)."""
    result = score_ifeval(items, answers)
    result.update(suite="guard", metric="prompt_level_loose", score=result["prompt_level_loose"])
    if losses is not None:
        for i, rec in enumerate(result["records"]):
            rec["reference_loss"] = losses.get(i)
    return result


def eval_guard(model, tokenizer, items: list[dict[str, Any]], generate: Callable[[list[str]], list[str]],
               reference: list[str] | None = None, max_tokens_per_row: int = MAX_TOKENS_PER_ROW,
               chunk_size: int = 512) -> dict[str, Any]:
    """Generate the model's answers to the guard items (with `generate(prompts) -> texts`), score them, and
    take the model's loss on the reference answers (`reference`: the base's answers, one per item; None: this
    model is the base and its own answers are the reference)."""
    prompts = [it["prompt"] for it in items]
    answers = generate(prompts)
    ref = answers if reference is None else reference
    if len(ref) != len(items):
        raise UserError(f"the guard has {len(items)} items but {len(ref)} reference answers: the base was evaluated "
                        "on another guard set (eval.guard_items); evaluate it again with --overwrite")
    samples = answer_loss_samples(tokenizer, prompts, ref)
    loss = eval_loss(model, samples, max_tokens_per_row, chunk_size) if samples else None
    per_item = {rec["line"] - 1: rec["loss"] for rec in loss["records"]} if loss else {}
    result = score_guard(items, answers, per_item)
    result["reference"] = "own answers (the base)" if reference is None else "the base model's answers"
    result["reference_loss"] = loss["score"] if loss else None
    result["reference_tokens"] = loss["target_tokens"] if loss else 0
    for rec, answer in zip(result["records"], ref):
        rec["reference_answer"] = answer
    return result
