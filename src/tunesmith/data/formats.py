"""Instruction-data formats: detect one per row, convert it to turns, validate.

    alpaca             instruction, input?, output, system?, history? ([[user, assistant], ...])
    dolly              instruction, context?, response (databricks-dolly-15k)
    prompt_completion  prompt, completion (TRL): both text, or both lists of messages
    sharegpt           conversations: [{from, value}], system?, tools? (LLaMA-Factory's
                       function_call / observation turns are tool calls and tool results)
    messages           messages: [{role, content, tool_calls?, weight?}], tools?
    preference         prompt?, chosen, rejected (TRL): text or messages; supervised training
                       learns the chosen answer, preference tuning reads both

Every format ends up as turns (see data.turns): an optional system turn, then user and assistant
turns (with tool calls and results where the data has them), ending with an assistant turn.
Anything else is a RowProblem with a short stable `kind` and a sentence that names the field,
turn or role at fault.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from .turns import RowProblem, check_order, make_turn, type_name

FORMATS = ("alpaca", "dolly", "prompt_completion", "sharegpt", "messages", "preference")

# ShareGPT "from" values seen in the wild, mapped to chat roles (compared lower-cased).
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "model": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
}
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                 "developer": "system", "function": "tool"}

# Which keys each format reads; everything else in a row is kept as metadata.
FORMAT_KEYS = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "dolly": ("instruction", "context", "response", "system"),
    "prompt_completion": ("prompt", "completion", "response", "system", "tools"),
    "sharegpt": ("conversations", "messages", "system", "tools"),
    "messages": ("messages", "conversations", "system", "tools"),
    "preference": ("prompt", "chosen", "rejected", "system", "tools"),
}

EXPECTED = ("alpaca (instruction, output), dolly (instruction, response), prompt/completion, sharegpt "
            "(conversations: [{from, value}]), messages (messages: [{role, content}]) or preference "
            "(chosen, rejected); other column names can be mapped with data.columns")


class Parsed(NamedTuple):
    """One row converted: its turns, the tools it may call, and (preference rows) the rejected turns."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    rejected: list[dict[str, Any]] | None = None


def detect_format(row: dict[str, Any]) -> str | None:
    """Guess the format of one row from its keys, or None when it matches none.

    Detection is by key presence, so a row that clearly means to be one format but is malformed
    (say, "messages" holding a string, or "instruction" without "output") is still assigned that
    format and its validation explains what is wrong, rather than a vaguer "unknown format".
    A list under "messages" or "conversations" is classified by its turns' keys, because many
    published datasets put {role, content} turns under "conversations" (and the odd one the
    reverse); the key name decides only when the turns say nothing.
    Null or empty-string values count as absent: a CSV or Parquet file that mixes formats has
    every column in every row, empty where the row does not use it.
    """
    present = {k for k, v in row.items() if v is not None and v != ""}
    if "chosen" in present or "rejected" in present:
        return "preference"
    for key, default in (("messages", "messages"), ("conversations", "sharegpt")):
        if key in present:
            turns = row[key]
            first = turns[0] if isinstance(turns, list) and turns else None
            if isinstance(first, dict):
                if "role" in first or "content" in first:
                    return "messages"
                if "from" in first or "value" in first:
                    return "sharegpt"
            return default
    if "prompt" in present and ("completion" in present or "response" in present):
        return "prompt_completion"
    # Dolly by its "response" column even when empty (so the empty answer is named), unless the
    # row is an alpaca row of a mixed CSV whose "output" holds the answer.
    if "response" in present or "context" in present or ("instruction" in present and "response" in row
                                                          and "output" not in present):
        return "dolly"
    if "instruction" in present or "output" in present:
        return "alpaca"
    if "prompt" in present or "completion" in present:
        return "prompt_completion"
    return None


def parse_row(row: dict[str, Any], fmt: str) -> Parsed:
    """Convert one row of format `fmt` to validated turns; raise RowProblem if it is unusable."""
    tools = _tools(row) if fmt in ("sharegpt", "messages", "prompt_completion", "preference") else None
    rejected = None
    if fmt == "alpaca":
        messages = _alpaca(row)
    elif fmt == "dolly":
        messages = _pair(row, "instruction", "response", "context", "dolly")
    elif fmt == "prompt_completion":
        messages = _prompt_completion(row, "response" if "completion" not in row and "response" in row
                                      else "completion")
    elif fmt == "sharegpt":
        messages = _with_system(row, _turns(row, "conversations", "from", "value", SHAREGPT_ROLES))
    elif fmt == "messages":
        messages = _with_system(row, _turns(row, "messages", "role", "content", MESSAGE_ROLES))
    elif fmt == "preference":
        messages, rejected = _preference(row)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    check_order(messages)
    if rejected is not None:
        try:
            check_order(rejected)
        except RowProblem as problem:
            raise RowProblem(problem.kind, f"rejected answer: {problem.text}") from None
    _check_tool_use(messages, tools)
    return Parsed(messages, tools, rejected)


def to_messages(row: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    """The validated turns of one row (see parse_row)."""
    return parse_row(row, fmt).messages


def extra_fields(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The row's fields that `fmt` does not read (ids, categories...), kept as example metadata."""
    used = FORMAT_KEYS[fmt]
    return {k: v for k, v in row.items() if k not in used}


# ---- the formats ------------------------------------------------------------------------------

def _alpaca(row: dict[str, Any]) -> list[dict[str, Any]]:
    messages = _pair(row, "instruction", "output", "input", "alpaca")
    history = row.get("history")
    if history in (None, "", []):
        return messages
    if not isinstance(history, list):
        raise RowProblem("wrong_type", f"field 'history' must be a list of [user, assistant] pairs, got "
                                       f"{type_name(history)}")
    earlier = []
    for k, pair in enumerate(history, start=1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowProblem("wrong_type", f"history entry {k} must be a [user, assistant] pair of strings")
        earlier += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    start = 1 if messages[0]["role"] == "system" else 0
    return messages[:start] + earlier + messages[start:]


def _pair(row: dict[str, Any], prompt_key: str, answer_key: str, extra: str, fmt: str) -> list[dict[str, Any]]:
    """A single exchange from text fields: prompt (+ "\n\n" + extra, if any), answer, system."""
    prompt = _text_field(row, prompt_key, True, fmt)
    more = _text_field(row, extra, False, fmt)
    answer = _text_field(row, answer_key, True, fmt)
    if not prompt.strip():
        raise RowProblem("empty_content", f"field '{prompt_key}' is empty")
    if not answer.strip():
        raise RowProblem("empty_assistant", f"field '{answer_key}' (the assistant turn) is empty")
    user = prompt + ("\n\n" + more if more.strip() else "")
    return _with_system(row, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


def _prompt_completion(row: dict[str, Any], answer_key: str) -> list[dict[str, Any]]:
    prompt, answer = row.get("prompt"), row.get(answer_key)
    if isinstance(prompt, list) or isinstance(answer, list):
        before = _message_list(prompt, "prompt")
        after = _message_list(answer, answer_key)
        if any(m["role"] not in ("assistant", "tool") for m in after):
            raise RowProblem("role_order", f"field '{answer_key}' may hold only assistant (and tool) turns")
        return _with_system(row, before + after)
    return _pair(row, "prompt", answer_key, "", "prompt/completion")


def _preference(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt + chosen, prompt + rejected). Without a prompt, chosen and rejected are whole
    conversations that share every turn but the last (TRL's implicit-prompt form)."""
    for key in ("chosen", "rejected"):
        if row.get(key) in (None, ""):
            raise RowProblem("missing_field", f"preference field '{key}' is {'null' if key in row else 'missing'}")
    sides = []
    for key in ("chosen", "rejected"):
        value = row[key]
        if isinstance(value, str):
            sides.append([{"role": "assistant", "content": value}])
        else:
            sides.append(_message_list(value, key))
    prompt = row.get("prompt")
    if prompt in (None, ""):
        chosen, rejected = sides
        if chosen[:-1] != rejected[:-1] or not chosen[:-1]:
            raise RowProblem("missing_field", "no 'prompt', and 'chosen' and 'rejected' do not share the turns "
                                              "before their last one")
        return _with_system(row, chosen), _with_system(row, rejected)
    before = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _message_list(prompt, "prompt")
    return _with_system(row, before + sides[0]), _with_system(row, before + sides[1])


def _message_list(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"field '{key}' must be a string or a list of messages, got {type_name(value)}")
    return _turns({key: value}, key, "role", "content", MESSAGE_ROLES, label=f"{key} ")


def _with_system(row: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put a row's top-level `system` text first, unless the turns already start with one."""
    system = row.get("system")
    if system in (None, ""):
        return messages
    if not isinstance(system, str):
        raise RowProblem("wrong_type", f"field 'system' must be a string, got {type_name(system)}")
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"] != system:
            raise RowProblem("role_order", "the row has both a 'system' field and a different system turn")
        return messages
    return [{"role": "system", "content": system}] + messages


def _text_field(row: dict[str, Any], key: str, required: bool, fmt: str) -> str:
    value = row.get(key) if key else None
    if value is None:
        if required:
            what = "is null" if key in row else "is missing"
            raise RowProblem("missing_field", f"{fmt} field '{key}' {what}")
        return ""
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"field '{key}' must be a string, got {type_name(value)}")
    return value


def _turns(row: dict[str, Any], key: str, role_key: str, content_key: str, roles: dict[str, str],
           label: str = "") -> list[dict[str, Any]]:
    # Read the canonical key, or the other conversation key (see detect_format for why).
    other = "messages" if key == "conversations" else "conversations"
    if key not in row and other in row:
        key = other
    turns = row.get(key)
    if turns is None:
        what = "is null" if key in row else "is missing"
        raise RowProblem("missing_field", f"field '{key}' {what}")
    if not isinstance(turns, list):
        raise RowProblem("wrong_type", f"field '{key}' must be a list of turns, got {type_name(turns)}")
    messages = []
    for i, turn in enumerate(turns, start=1):
        where = f"{label}turn {i}"
        if not isinstance(turn, dict):
            raise RowProblem("wrong_type", f"{where} must be an object, got {type_name(turn)}")
        # A turn may carry its role as role_key, or the other format's key (mixed exports exist).
        name = turn.get(role_key, turn.get("role" if role_key == "from" else "from"))
        if name is None:
            raise RowProblem("missing_field", f"{where} has no '{role_key}'")
        if not isinstance(name, str):
            raise RowProblem("wrong_type", f"{where}: '{role_key}' must be a string, got {type_name(name)}")
        role = roles.get(name.strip().lower())
        if role is None:
            raise RowProblem("unknown_role", f"{where} has {role_key} {name!r}; expected one of {', '.join(sorted(roles))}")
        content = turn.get(content_key, turn.get("content" if content_key == "value" else "value"))
        if name.strip().lower() == "function_call":
            messages.append(_sharegpt_call(content, where))
            continue
        if content is None and not (role == "assistant" and turn.get("tool_calls")):
            raise RowProblem("missing_field", f"{where} has no '{content_key}'")
        messages.append(make_turn(role, turn, content, where))
    return messages


def _sharegpt_call(value: Any, where: str) -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT tool call: a function_call turn whose value is JSON {name, arguments}
    (or a list of them)."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise RowProblem("bad_tool_call", f"{where}: function_call value is not JSON ({exc.msg})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    return make_turn("assistant", {"tool_calls": [{"type": "function", "function": c} for c in calls]}, "", where)


def _tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The row's tool (function) definitions in OpenAI form, or None."""
    tools = row.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise RowProblem("bad_tools", f"field 'tools' is text but not JSON ({exc.msg})") from None
    if not isinstance(tools, list):
        raise RowProblem("bad_tools", f"field 'tools' must be a list of function definitions, got {type_name(tools)}")
    out = []
    for k, tool in enumerate(tools, start=1):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RowProblem("bad_tools", f"tool {k} has no function name")
        out.append({"type": "function", "function": fn})
    return out


def _check_tool_use(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """Calls must name a declared tool when the row declares its tools."""
    if not tools:
        return
    names = {t["function"]["name"] for t in tools}
    for i, msg in enumerate(messages, start=1):
        for call in msg.get("tool_calls", ()):
            if call["function"]["name"] not in names:
                raise RowProblem("bad_tool_call", f"turn {i} calls {call['function']['name']!r}, which is not in "
                                                  f"the row's tools ({', '.join(sorted(names))})")
