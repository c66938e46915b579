"""One conversation turn as tunesmith keeps it, read from any format, and the order rules.

A turn is an OpenAI-style message dict:
    {"role": "system" | "user" | "assistant" | "tool", "content": str}
plus, only where the data has them:
    "tool_calls":   [{"type": "function", "function": {"name": str, "arguments": dict | str}, "id"?: str}]
                    on an assistant turn (its content may then be empty)
    "tool_call_id", "name": on a tool turn (the call it answers)
    "weight":       0 or 1 on any turn: 0 means the turn is context, never trained on; 1 means it is
                    trained on whatever data.train_on says (a user turn with weight 1 too)
Content given as a list of parts ([{"type": "text", "text": ...}]) is joined into one string, as
chat templates that accept parts print them; a non-text part (image, audio) is refused, since the
models tunesmith trains read text only.
Every problem is a RowProblem with a short stable `kind` and a sentence naming the turn at fault.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Optional turn keys kept as they are (the chat template reads them).
TOOL_CALL_KEYS = ("tool_calls", "function_call")


class RowProblem(ValueError):
    """Why one row cannot be used. str() gives "<kind>: <text>", the form stored in Reject.reason."""

    def __init__(self, kind: str, text: str):
        super().__init__(f"{kind}: {text}")
        self.kind = kind
        self.text = text


def type_name(value: Any) -> str:
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


def content_text(content: Any, where: str) -> str:
    """A turn's content as one string: a string as is, a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content, start=1):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise RowProblem("wrong_type", f"{where}: content part {k} must be an object, got {type_name(part)}")
            kind = part.get("type", "text")
            if kind != "text":
                raise RowProblem("unsupported_content", f"{where}: content part {k} is {kind!r}; only text parts "
                                                        "can be trained on (the model reads text only)")
            text = part.get("text")
            if not isinstance(text, str):
                raise RowProblem("wrong_type", f"{where}: content part {k} has no 'text' string")
            texts.append(text)
        return "".join(texts)
    raise RowProblem("wrong_type", f"{where}: content must be a string or a list of text parts, got "
                                   f"{type_name(content)}")


def tool_calls(turn: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The turn's tool calls in OpenAI form (None when it has none); `arguments` JSON text is parsed
    into an object, since chat templates print it with tojson."""
    calls = turn.get("tool_calls")
    if calls is None and isinstance(turn.get("function_call"), dict):
        calls = [{"type": "function", "function": turn["function_call"]}]  # the older single-call form
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list):
        raise RowProblem("wrong_type", f"{where}: 'tool_calls' must be a list, got {type_name(calls)}")
    out = []
    for k, call in enumerate(calls, start=1):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RowProblem("bad_tool_call", f"{where}: tool call {k} has no function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            import json

            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise RowProblem("bad_tool_call", f"{where}: tool call {k} ({fn['name']}): arguments are not "
                                                  f"valid JSON ({exc.msg})") from None
        fixed = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, dict) and call.get("id") is not None:
            fixed["id"] = str(call["id"])
        out.append(fixed)
    return out


def make_turn(role: str, raw: dict[str, Any] | None, content: Any, where: str) -> dict[str, Any]:
    """A validated turn from its role, its raw dict (for tool keys and weight) and its content."""
    turn: dict[str, Any] = {"role": role, "content": "" if content is None else content_text(content, where)}
    raw = raw or {}
    if role == "assistant":
        calls = tool_calls(raw, where)
        if calls:
            turn["tool_calls"] = calls
    elif any(raw.get(k) for k in TOOL_CALL_KEYS):
        raise RowProblem("bad_tool_call", f"{where} is a {role} turn with tool calls; only assistant turns call tools")
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if raw.get(key) is not None:
                turn[key] = str(raw[key])
    if "weight" in raw and raw["weight"] is not None:
        weight = raw["weight"]
        if weight not in (0, 1):
            raise RowProblem("bad_weight", f"{where}: weight must be 0 or 1, got {weight!r}")
        turn["weight"] = int(weight)
    if content is None and role != "assistant":
        raise RowProblem("missing_field", f"{where} has no content")
    return turn


def check_order(messages: list[dict[str, Any]]) -> None:
    """Check turn order and emptiness (turns numbered from 1).

    One optional system turn first; then user and assistant alternate, starting with user; an
    assistant turn with tool calls is followed by one or more tool turns and then an assistant
    turn; the conversation ends with an assistant turn that is trained on (weight 1).
    """
    if not messages:
        raise RowProblem("empty_conversation", "the conversation has no turns")
    expected = ("user",)
    for i, msg in enumerate(messages, start=1):
        role, content = msg["role"], msg["content"]
        if role == "system":
            if i != 1:
                raise RowProblem("role_order", f"turn {i} is a system turn; only the first turn may be system")
            continue
        if role not in expected:
            raise RowProblem("role_order", _order_text(messages, i, expected))
        if role == "user":
            expected = ("assistant",)
        elif role == "assistant":
            expected = ("tool",) if msg.get("tool_calls") else ("user",)
        else:  # tool results, then more results or the assistant's answer
            expected = ("tool", "assistant")
        if not content.strip() and not msg.get("tool_calls"):
            if role == "assistant":
                raise RowProblem("empty_assistant", f"turn {i} (assistant) is empty")
            raise RowProblem("empty_content", f"turn {i} ({role}) is empty")
    last = messages[-1]
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no_assistant", "the conversation has no assistant turn to learn from")
    if last["role"] != "assistant":
        raise RowProblem("role_order", f"the last turn ({len(messages)}) is {last['role']}; the conversation must "
                                       "end with an assistant turn")
    if all(m.get("weight", 1) == 0 for m in messages if m["role"] == "assistant") and \
            not any(m.get("weight") == 1 for m in messages if m["role"] != "assistant"):
        raise RowProblem("no_trainable_turn", "every assistant turn has weight 0; nothing to learn from")


def _order_text(messages: list[dict[str, Any]], i: int, expected: tuple[str, ...]) -> str:
    role = messages[i - 1]["role"]
    first = i == 1 or (i == 2 and messages[0]["role"] == "system")
    if first:
        return f"turn {i} is {role}; the conversation must start with a user turn"
    if expected == ("tool",):
        return f"turn {i} is {role}; turn {i - 1} calls tools, so tool results must follow it"
    if role == "tool":
        return f"turn {i} is a tool result, but turn {i - 1} makes no tool call"
    if role == messages[i - 2]["role"]:
        return f"turns {i - 1} and {i} are both {role}; user and assistant turns must alternate"
    return f"turn {i} is {role}; expected {' or '.join(expected)}"
