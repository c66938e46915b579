"""Prompts from the user's files: every row becomes a prompt with its verifier, or a reject with file:line.

Files, folders and globs are found and read as training data is (`data.readers`), and each row is
converted by `data.load.convert_row`, so the formats, column checks and reject reasons are those of
`tunesmith data check`. A row is, by its keys:

  code         {prompt, test, entry_point}: a HumanEval-style problem; its answers are run against
               its tests in the sandbox (verifier "code")
  instructions {prompt, instruction_id_list, kwargs}: IFEval instructions, scored by their checkers
  prompt only  {prompt}, {instruction}, or messages/conversations ending with a user turn
  conversation any training format (alpaca, sharegpt, messages, preference...): the turns before its
               last assistant turn are the prompt, that turn is its reference answer

A prompt-only row or a conversation is verified by `check_answer` when it names a built-in task
(`task` field, with `answer` or its reference), else it has verifier "none": free text that nothing
here can check (see synth.prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.example import Example, Reject
from ..data.formats import MESSAGE_ROLES, SHAREGPT_ROLES
from ..data.load import DEFAULT_MAX_ROW_BYTES, convert_row
from ..data.readers import iter_records, scan
from ..data.tasks import TASK_TYPES
from ..errors import UserError
from .prompts import SynthPrompt

ANSWER_KEYS = ("completion", "response", "output", "chosen", "rejected")
_PLACEHOLDER = "(answer to be sampled)"


@dataclass
class PromptFile:
    """What reading one --prompts path gave: the prompts, every bad row, and counts per file."""

    prompts: list[SynthPrompt] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    total: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def read_prompt_rows(spec: str, limit: int | None = None, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> PromptFile:
    """Every row under `spec` (file, folder or glob) as a prompt or a reject; the first `limit` prompts
    are kept (all rows are still read, so every bad row is reported)."""
    found, skipped = scan(spec)
    result = PromptFile(skipped=[{"path": str(p), "reason": why} for p, why in skipped])
    registry: dict[str, Any] = {}
    for src in found:
        source, rows, kept = str(src.path), 0, 0
        for rec in iter_records(src.path, max_row_bytes=max_row_bytes):
            rows += 1
            if rec.error is not None:
                result.rejects.append(Reject(source, rec.line, rec.error, rec.text, rec.offset, rec.index))
                continue
            item = row_prompt(rec.row, spec, source, rec.line, registry, rec.index)
            if isinstance(item, Reject):
                item.offset = rec.offset
                result.rejects.append(item)
                continue
            kept += 1
            if limit is None or len(result.prompts) < limit:
                result.prompts.append(item)
        result.total += rows
        result.files.append({"path": source, "kind": src.kind, "rows": rows, "kept": kept, "rejected": rows - kept})
    return result


def row_prompt(row: dict[str, Any], spec: str, source: str, line: int, registry: dict[str, Any],
               index: int | None = None) -> SynthPrompt | Reject:
    """One row as a SynthPrompt (see the module docstring) or a Reject saying why not."""
    where = f"{source}:{line}" if index is None else f"{source}:record {index} (line {line})"
    if "test" in row or "entry_point" in row:
        return _code_row(row, spec, source, line, where, index)
    if "instruction_id_list" in row:
        return _instruction_row(row, spec, source, line, where, registry, index)
    amended = _prompt_only(row)
    ex = convert_row(amended if amended is not None else row, "auto", source, line, index=index)
    if isinstance(ex, Reject):
        ex.raw = row
        return ex
    if ex.tools:
        return Reject(source, line, "tools: rows with tool definitions are not sampled (synth samples plain chat "
                                    "turns)", row, index=index)
    last = max(i for i, m in enumerate(ex.messages) if m["role"] == "assistant")
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in ex.messages[:last]]
    if not any(m["role"] == "user" for m in messages):
        return Reject(source, line, "no_prompt: the row has no user turn before its last assistant turn", row,
                      index=index)
    reference = None if amended is not None else ex.messages[last]["content"]
    return _with_verifier(ex, messages, reference, spec, where)


def _with_verifier(ex: Example, messages: list[dict[str, Any]], reference: str | None, spec: str,
                   where: str) -> SynthPrompt:
    fields = ex.meta.get("fields", {})
    task, answer = fields.get("task"), fields.get("answer", reference)
    if task in TASK_TYPES and isinstance(answer, str) and answer.strip():
        return SynthPrompt(where, spec, ex.origin, messages, "tasks", {"task": task, "answer": answer}, [task],
                           reference)
    return SynthPrompt(where, spec, ex.origin, messages, "none", {}, [], reference)


def _prompt_only(row: dict[str, Any]) -> dict[str, Any] | None:
    """A row without an answer, completed with a placeholder answer so `convert_row` validates the rest
    (the placeholder turn is dropped again); None for a row that has its answer."""
    if any(row.get(k) not in (None, "") for k in ANSWER_KEYS):
        return None
    for key in ("messages", "conversations"):
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
            last = turns[-1]
            role = str(last.get("role", last.get("from", ""))).lower()
            if MESSAGE_ROLES.get(role, SHAREGPT_ROLES.get(role)) == "assistant":
                return None
            turn = {"role": "assistant", "content": _PLACEHOLDER} if "role" in last or "content" in last \
                else {"from": "gpt", "value": _PLACEHOLDER}
            return {**row, key: [*turns, turn]}
        if turns not in (None, ""):
            return None
    if "prompt" in row:
        return {**row, "completion": _PLACEHOLDER}
    if "instruction" in row:
        return {**row, "output": _PLACEHOLDER}
    return None


def _text(row: dict[str, Any], key: str, what: str) -> str:
    value = row.get(key)
    if value is None or value == "":
        state = "empty" if value == "" else "null" if key in row else "missing"
        raise _Bad("missing_field", f"{what} field '{key}' is {state}")
    if not isinstance(value, str):
        raise _Bad("wrong_type", f"field '{key}' must be a string, got {type(value).__name__}")
    return value


class _Bad(Exception):
    def __init__(self, kind: str, text: str):
        super().__init__(f"{kind}: {text}")


def _code_row(row, spec, source, line, where, index) -> SynthPrompt | Reject:
    from ..evaluate.harness import HUMANEVAL_INSTRUCTION

    try:
        problem = {k: _text(row, k, "code row") for k in ("prompt", "test", "entry_point")}
    except _Bad as bad:
        return Reject(source, line, str(bad), row, index=index)
    if not problem["entry_point"].isidentifier():
        return Reject(source, line, f"bad_value: entry_point {problem['entry_point']!r} is not a Python name", row,
                      index=index)
    problem["task_id"] = str(row.get("task_id") or where)
    origin = row.get("origin") if isinstance(row.get("origin"), str) else where
    return SynthPrompt(where, spec, origin, [{"role": "user", "content": HUMANEVAL_INSTRUCTION.format(
        prompt=problem["prompt"])}], "code", problem, ["code"])


def _instruction_row(row, spec, source, line, where, registry, index) -> SynthPrompt | Reject:
    from ..evalsets.ifcheck import check_item, ifeval_registry

    try:
        prompt = _text(row, "prompt", "instruction row")
    except _Bad as bad:
        return Reject(source, line, str(bad), row, index=index)
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return Reject(source, line, "wrong_type: 'instruction_id_list' must be a non-empty list of instruction ids",
                      row, index=index)
    kwargs = [{} for _ in ids] if kwargs is None else kwargs
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        return Reject(source, line, f"wrong_type: 'kwargs' must be a list of {len(ids)} objects, one per "
                                    "instruction id", row, index=index)
    if not registry:
        registry.update(ifeval_registry())
    unknown = [i for i in ids if i not in registry]
    if unknown:
        return Reject(source, line, f"unknown_instruction: {unknown} not in the IFEval checker registry "
                                    "(if-verifiable)", row, index=index)
    item = {"key": str(row.get("key") or where), "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}
    try:
        check_item(registry, item, "probe")  # bad kwargs fail now, not after sampling
    except UserError as err:
        return Reject(source, line, f"bad_value: {err}", row, index=index)
    origin = row.get("origin") if isinstance(row.get("origin"), str) else where
    return SynthPrompt(where, spec, origin, [{"role": "user", "content": prompt}], "ifeval", item, list(ids))
