"""Instruction-data formats (alpaca, sharegpt, messages): detect one per row, convert and validate.

Every format ends up as OpenAI-style messages: an optional single system turn first, then user and
assistant turns strictly alternating, starting with user and ending with a non-empty assistant
turn. Anything else is a `RowProblem` with a short stable `kind` (used to count rejects by reason)
and a sentence that names the field, turn or role at fault.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("alpaca", "sharegpt", "messages")

# ShareGPT "from" values seen in the wild, mapped to chat roles (compared lower-cased).
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
MESSAGE_ROLES = ("system", "user", "assistant")

# Which keys each format reads; everything else in a row is kept as metadata.
FORMAT_KEYS = {
    "alpaca": ("instruction", "input", "output", "system"),
    "sharegpt": ("conversations", "messages"),
    "messages": ("messages", "conversations"),
}

EXPECTED = (
    "alpaca (instruction, output), sharegpt (conversations: [{from, value}]) "
    "or messages (messages: [{role, content}])"
)


class RowProblem(ValueError):
    """Why one row cannot be used. str() gives "<kind>: <text>", the form stored in Reject.reason."""

    def __init__(self, kind: str, text: str):
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text


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
    if "instruction" in present or "output" in present:
        return "alpaca"
    return None


def to_messages(row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """Convert one row of format `fmt` to validated messages; raise RowProblem if it is unusable."""
    if fmt == "alpaca":
        messages = _alpaca(row)
    elif fmt == "sharegpt":
        messages = _turns(row, "conversations", "from", "value", SHAREGPT_ROLES)
    elif fmt == "messages":
        messages = _turns(row, "messages", "role", "content", {r: r for r in MESSAGE_ROLES})
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    check_order(messages)
    return messages


def extra_fields(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The row's fields that `fmt` does not read (ids, categories...), kept as example metadata."""
    used = FORMAT_KEYS[fmt]
    return {k: v for k, v in row.items() if k not in used}


def check_order(messages: list[dict[str, str]]) -> None:
    """Check turn order and emptiness of already-converted messages (turns numbered from 1)."""
    if not messages:
        raise RowProblem("empty_conversation", "the conversation has no turns")
    expected = "user"
    for i, msg in enumerate(messages, start=1):
        role, content = msg["role"], msg["content"]
        if role == "system":
            if i != 1:
                raise RowProblem(
                    "role_order", f"turn {i} is a system turn; only the first turn may be system"
                )
        elif role != expected:
            if i == 1 or (i == 2 and messages[0]["role"] == "system"):
                text = f"turn {i} is {role}; the conversation must start with a user turn"
            else:
                text = f"turns {i - 1} and {i} are both {role}; user and assistant turns must alternate"
            raise RowProblem("role_order", text)
        else:
            expected = "assistant" if role == "user" else "user"
        if not content.strip():
            if role == "assistant":
                raise RowProblem("empty_assistant", f"turn {i} (assistant) is empty")
            raise RowProblem("empty_content", f"turn {i} ({role}) is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no_assistant", "the conversation has no assistant turn to learn from")
    if messages[-1]["role"] != "assistant":
        raise RowProblem(
            "role_order",
            f"the last turn ({len(messages)}) is {messages[-1]['role']}; "
            "the conversation must end with an assistant turn",
        )


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _text_field(row, "instruction", required=True)
    extra = _text_field(row, "input", required=False)
    output = _text_field(row, "output", required=True)
    system = _text_field(row, "system", required=False)
    if not instruction.strip():
        raise RowProblem("empty_content", "field 'instruction' is empty")
    if not output.strip():
        raise RowProblem("empty_assistant", "field 'output' (the assistant turn) is empty")
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    messages = []
    # An empty "system" cell is treated as absent: CSV/Parquet exports carry the column for every
    # row, and an empty system turn would only add an empty block to the prompt.
    if system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return messages


def _text_field(row: dict[str, Any], key: str, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            what = "is null" if key in row else "is missing"
            raise RowProblem("missing_field", f"alpaca field '{key}' {what}")
        return ""
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"field '{key}' must be a string, got {_type_name(value)}")
    return value


def _turns(
    row: dict[str, Any], key: str, role_key: str, content_key: str, roles: dict[str, str]
) -> list[dict[str, str]]:
    # Read the canonical key, or the other conversation key (see detect_format for why).
    other = "messages" if key == "conversations" else "conversations"
    if key not in row and other in row:
        key = other
    turns = row.get(key)
    if turns is None:
        what = "is null" if key in row else "is missing"
        raise RowProblem("missing_field", f"field '{key}' {what}")
    if not isinstance(turns, list):
        raise RowProblem("wrong_type", f"field '{key}' must be a list of turns, got {_type_name(turns)}")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise RowProblem("wrong_type", f"turn {i} must be an object, got {_type_name(turn)}")
        for k in (role_key, content_key):
            if turn.get(k) is None:
                raise RowProblem("missing_field", f"turn {i} has no '{k}'")
        name, content = turn[role_key], turn[content_key]
        if not isinstance(name, str):
            text = f"turn {i}: '{role_key}' must be a string, got {_type_name(name)}"
            raise RowProblem("wrong_type", text)
        role = roles.get(name.strip().lower())
        if role is None:
            raise RowProblem(
                "unknown_role",
                f"turn {i} has {role_key} {name!r}; expected one of {', '.join(sorted(roles))}",
            )
        if not isinstance(content, str):
            raise RowProblem(
                "wrong_type", f"turn {i}: '{content_key}' must be a string, got {_type_name(content)}"
            )
        messages.append({"role": role, "content": content})
    return messages


def _type_name(value: Any) -> str:
    """JSON's name for a value's type, which is what users see in their files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
