"""HumanEval through the sandbox: pass@k, reply-to-completion extraction, and the canonical solutions."""

from __future__ import annotations

import importlib.util
import math
import random
import time

import pytest

from tunesmith.errors import UserError
from tunesmith.evalsets import humaneval
from tunesmith.evalsets.humaneval import load_humaneval
from tunesmith.evaluate.humaneval import extract_code, pass_at_k, program_for, score_humaneval


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


# pass@k ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,k,expected", [
    (10, 3, 1, 0.3), (10, 0, 1, 0.0), (10, 0, 10, 0.0), (10, 10, 1, 1.0), (5, 1, 5, 1.0), (5, 4, 2, 1.0),
    (10, 3, 2, 1 - 21 / 45), (1, 1, 1, 1.0), (1, 0, 1, 0.0), (200, 1, 100, 0.5),
])
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_definition():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 60)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-9)
    assert 0.0 <= pass_at_k(2000, 3, 1000) <= 1.0  # huge binomials never formed


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, 1, 6), (5, 1, 0), (5, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


# data --------------------------------------------------------------------------------------------

def test_load_humaneval(problems):
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert all({"task_id", "prompt", "canonical_solution", "test", "entry_point"} <= set(p) for p in problems)
    assert [p["task_id"] for p in load_humaneval(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_missing_package_is_a_clear_user_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install"):
        humaneval.load_humaneval()


def test_program_is_built_like_the_reference(problems):
    p = problems[0]
    prog = program_for(p, "    return False\n")
    assert prog == p["prompt"] + "    return False\n" + "\n" + p["test"] + "\n" + "check(has_close_elements)"


# extract_code ------------------------------------------------------------------------------------

# Replies for HumanEval/2 (truncate_number(number: float) -> float: the decimal part).
FULL_FUNCTION = '''Here is the solution:

```python
import math

def truncate_number(number: float) -> float:
    """Return the decimal part."""
    return number - math.floor(number)

print(truncate_number(3.5))
```
It subtracts the integer part.'''

WITH_HELPER = '''```python
def _integer_part(x):
    return int(x)

def truncate_number(number: float) -> float:
    return number - _integer_part(number)

if __name__ == "__main__":
    assert truncate_number(3.5) == 0.5
```'''

RENAMED_PARAMETER = "```python\ndef truncate_number(x):\n    return x % 1.0\n```"
TWO_SPACES = "```python\ndef truncate_number(number: float) -> float:\n  frac = number % 1.0\n  return frac\n```"
ONE_LINER = "```python\ndef truncate_number(number): return number % 1.0\n```"
BARE_BODY = "```python\nreturn number % 1.0\n```"
CONTINUATION = "    return number % 1.0\n\n\ndef check_it():\n    pass\n\nprint(truncate_number(2.25))\n"
UNCLOSED = "Sure!\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n\nprint(truncate_nu"
TWO_BLOCKS = ("Usage:\n```python\nprint(truncate_number(3.5))\n```\nCode:\n```py\n"
              "def truncate_number(number: float) -> float:\n    return number % 1.0\n```")
THINKING = "<think>maybe ```python\ndef truncate_number(number): return 0\n```</think>\n```python\n" \
           "def truncate_number(number: float) -> float:\n    return number % 1.0\n```"
WRONG = "```python\ndef truncate_number(number: float) -> float:\n    return number\n```"


def test_extract_code_shapes(problems):
    p = problems[2]
    assert extract_code(FULL_FUNCTION, p) == "    import math\n    return number - math.floor(number)\n"
    assert extract_code(BARE_BODY, p) == "    return number % 1.0\n"
    assert extract_code(CONTINUATION, p).startswith("    return number % 1.0\n")
    assert "print(" not in extract_code(CONTINUATION, p) and "def check_it" in extract_code(CONTINUATION, p)
    assert extract_code(p["prompt"] + CONTINUATION, p) == extract_code(CONTINUATION, p)  # echoed prompt
    assert extract_code(UNCLOSED, p) == "    return number % 1.0\n"
    assert extract_code(TWO_BLOCKS, p) == "    return number % 1.0\n"
    assert extract_code(THINKING, p) == "    return number % 1.0\n"
    helper = extract_code(WITH_HELPER, p)  # kept whole after a stub body; its __main__ block dropped
    assert helper.startswith("    pass\n") and "def _integer_part" in helper and "__main__" not in helper
    for reply in (RENAMED_PARAMETER, TWO_SPACES, ONE_LINER):  # cannot be a body under the prompt's def
        assert extract_code(reply, p).startswith("    pass\n\ndef truncate_number(")
    assert extract_code("I don't know.", p).startswith("    ")  # still a syntactically placed body
    assert extract_code("", p) == "    pass\n"


def test_extracted_completions_run_correctly_in_the_sandbox(problems):
    p = problems[2]
    replies = [FULL_FUNCTION, WITH_HELPER, RENAMED_PARAMETER, TWO_SPACES, ONE_LINER, BARE_BODY, CONTINUATION,
               UNCLOSED, TWO_BLOCKS, THINKING, WRONG]
    for reply in replies:
        compile(program_for(p, extract_code(reply, p)), "<program>", "exec")
    res = score_humaneval([p], [[extract_code(r, p) for r in replies]], ks=(1, 5), timeout_s=5)
    verdicts = [r["passed"] for r in res["records"][0]["results"]]
    assert verdicts == [True] * (len(replies) - 1) + [False], res["records"][0]["results"]
    assert res["records"][0]["correct"] == len(replies) - 1
    assert res["pass@k"][1] == pytest.approx(10 / 11) and res["pass@k"][5] == 1.0


# scoring -----------------------------------------------------------------------------------------

def test_canonical_and_wrong_completions(problems):
    """Fast: 10 canonical solutions pass; a wrong answer, a crash and a hang fail."""
    picked = problems[::17][:10]
    wrong = [(problems[0], "    return not True\n"), (problems[2], "    raise RuntimeError('no')\n"),
             (problems[4], "    while True:\n        pass\n")]
    all_problems = picked + [p for p, _ in wrong]
    completions = [[p["canonical_solution"]] for p in picked] + [[c] for _, c in wrong]
    res = score_humaneval(all_problems, completions, timeout_s=3, workers=2)
    assert res["suite"] == "humaneval" and res["n"] == 13 and res["samples"] == 13
    assert [r["passed"] for r in res["records"]] == [True] * 10 + [False] * 3
    assert [r["status"] for r in res["records"][10:]] == ["failed", "failed", "timeout"]
    assert res["score"] == pytest.approx(10 / 13) and res["pass@k"] == {1: pytest.approx(10 / 13)}
    assert "RuntimeError" in res["records"][11]["results"][0]["stderr_tail"]
    assert res["status_counts"] == {"passed": 10, "failed": 2, "timeout": 1}
    rec = res["records"][0]
    assert rec["task_id"] == picked[0]["task_id"] and rec["completion"] == picked[0]["canonical_solution"]
    assert res["isolation"]


def test_score_rejects_mismatched_inputs(problems):
    with pytest.raises(ValueError, match="completions for 1 problems"):
        score_humaneval(problems[:2], [["    return 1\n"]])
    with pytest.raises(ValueError, match="at least k completions"):
        score_humaneval(problems[:1], [["    return 1\n"]], ks=(1, 10))


def test_all_canonical_solutions_pass(problems):
    """All 164 canonical solutions through the sandbox (~15 s on 2 cores)."""
    start = time.monotonic()
    res = score_humaneval(problems, [[p["canonical_solution"]] for p in problems], timeout_s=10, workers=2)
    failed = [(r["task_id"], r["results"][0]["stderr_tail"]) for r in res["records"] if not r["passed"]]
    assert failed == [] and res["score"] == 1.0 and res["n"] == 164
    print(f"\nHumanEval canonical: pass@1 {res['score']:.3f} in {time.monotonic() - start:.1f} s")
