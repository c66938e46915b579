"""Score sampled answers with their prompt's verifier (see synth.prompts for the verifiers).

A verdict is a dict: `passed` (True/False, None for verifier "none") plus what the verifier saw:
  ifeval  strict and loose for the item and per instruction (the reference IFEval rules, evalsets.ifcheck)
  tasks   the reference answer
  code    the sandbox status (passed, failed, timeout, memory, error) and the tail of stderr
Code answers run in the OS-level sandbox (evaluate.sandbox), several at a time on threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .prompts import SynthPrompt


def verify_ifeval(registry, prompt: SynthPrompt, text: str) -> dict[str, Any]:
    """All instructions followed, strict (accepted) and loose (recorded), per instruction too."""
    from ..evalsets.ifcheck import check_item

    rec = check_item(registry, prompt.spec, text)
    out = {"passed": bool(rec["follow_all_strict"]), "strict": bool(rec["follow_all_strict"]),
           "loose": bool(rec["follow_all_loose"]),
           "instructions": {iid: {"strict": bool(s), "loose": bool(lo)} for iid, s, lo in
                            zip(rec["instruction_id_list"], rec["follow_instruction_strict"],
                                rec["follow_instruction_loose"])}}
    if rec.get("errors"):
        out["errors"] = rec["errors"]
    return out


def verify_task(prompt: SynthPrompt, text: str) -> dict[str, Any]:
    """`check_answer` against the reference."""
    from ..data.tasks import check_answer

    return {"passed": check_answer(prompt.spec["task"], text, prompt.spec["answer"]),
            "answer": prompt.spec["answer"]}


def verify_code(prompt: SynthPrompt, text: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The problem's tests on the code extracted from the answer, in the sandbox."""
    from ..evaluate.humaneval import extract_code, program_for
    from ..evaluate.sandbox import run_sandboxed

    completion = extract_code(text, prompt.spec)
    result = run_sandboxed(program_for(prompt.spec, completion), timeout_s=timeout_s)
    out = {"passed": result.passed, "status": result.status}
    if not result.passed:
        out["detail"] = result.detail
        out["stderr_tail"] = result.stderr[-400:]
    return out


def verify_all(jobs: Sequence[tuple[SynthPrompt, str]], workers: int = 2, timeout_s: float = 10.0,
               progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """A verdict for every (prompt, answer), in order; code answers run `workers` at a time."""
    registry = None
    if any(p.verifier == "ifeval" for p, _ in jobs):
        from ..evalsets.ifcheck import ifeval_registry

        registry = ifeval_registry()

    def one(job: tuple[SynthPrompt, str]) -> dict[str, Any]:
        prompt, text = job
        if prompt.verifier == "ifeval":
            return verify_ifeval(registry, prompt, text)
        if prompt.verifier == "tasks":
            return verify_task(prompt, text)
        if prompt.verifier == "code":
            return verify_code(prompt, text, timeout_s)
        return {"passed": None}

    verdicts: list[dict[str, Any] | None] = [None] * len(jobs)
    code = [i for i, (p, _) in enumerate(jobs) if p.verifier == "code"]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {i: pool.submit(one, jobs[i]) for i in code}  # sandboxed runs go on while the rest is scored
        for i, job in enumerate(jobs):
            if i not in futures:
                verdicts[i] = one(job)
                if progress is not None:
                    progress(1)
        for i, fut in futures.items():
            verdicts[i] = fut.result()
            if progress is not None:
                progress(1)
    return verdicts  # type: ignore[return-value]
