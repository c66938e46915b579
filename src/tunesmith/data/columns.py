"""Column mapping: read files whose columns have other names (`question/answer`, `query/reply`).

A mapping is {field tunesmith reads: column in the file}, for example
    data.columns: {prompt: question, response: answer}
    --data.columns prompt=question,response=answer
The fields are those the formats read (see data.formats): instruction, input, output, context,
response, prompt, completion, system, history, messages, conversations, chosen, rejected, tools, id.
"""

from __future__ import annotations

from typing import Any

from .turns import RowProblem

FIELDS = ("instruction", "input", "output", "context", "response", "prompt", "completion", "system", "history",
          "messages", "conversations", "chosen", "rejected", "tools", "id")


def parse_columns(value: Any) -> dict[str, str]:
    """A mapping from the recipe (a dict) or the command line ("prompt=question,response=answer").

    Raises ValueError with the offending entry; unknown target fields are refused so a typo does
    not silently map nothing."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            if not part.strip():
                continue
            target, sep, column = part.partition("=")
            if not sep or not target.strip() or not column.strip():
                raise ValueError(f"column mapping entry {part.strip()!r} must look like field=column "
                                 "(e.g. prompt=question)")
            pairs[target.strip()] = column.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError(f"a column mapping is {{field: column}} or 'field=column,...', got {type(value).__name__}")
    unknown = [k for k in value if k not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in the column mapping; map to one of {', '.join(FIELDS)}")
    bad = [k for k, v in value.items() if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"column mapping for {bad} must name a column (a non-empty string)")
    return dict(value)


def apply_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The row with its mapped columns renamed to the fields tunesmith reads.

    A mapped column the row lacks is a RowProblem naming it. A column that already has a
    field's name and is shadowed by the mapping is kept under "<name> (unmapped)", not dropped.
    """
    missing = [col for col in columns.values() if col not in row]
    if missing:
        have = ", ".join(repr(k) for k in list(row)[:10])
        raise RowProblem("missing_column", f"mapped column(s) {missing} not in the row (it has {have})")
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for target, col in columns.items():
        if target in out and target != col:
            out[f"{target} (unmapped)"] = out.pop(target)
        out[target] = row[col]
    return out
