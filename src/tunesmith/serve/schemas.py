"""Request bodies of the OpenAI API (chat completions and legacy completions), validated strictly.

Like OpenAI, unknown fields are ignored; a known field with a wrong type or an out-of-range value
is a 400 that names it (`param`, e.g. "temperature" or "messages[0].content"). Known OpenAI
features this server does not implement (tools, penalties, logit_bias, ...) are refused by name
rather than silently dropped. Request-dependent bounds (n, max_tokens, prompt length) live in
limits.py.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .apierror import APIError, bad_request

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit on legacy completions' `logprobs`


class _Body(BaseModel):
    """Strict types (no "1" for 1), unknown keys ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, list):
            kinds = sorted({p.type for p in value if p.type != "text"})
            if kinds:
                raise ValueError(f"only text content parts are supported (got {', '.join(kinds)})")
        return value

    def to_template(self) -> dict[str, str]:
        """{role, content} as the chat template takes it (developer turns are system turns)."""
        text = self.content if isinstance(self.content, str) else \
            "".join(p.text or "" for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    """Fields shared by both endpoints. None means "not given" (OpenAI accepts null for each)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence may not be empty")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, why) for known OpenAI features given a value this server cannot honour."""
        out = [(p, "is not supported by this server (give 0 or leave it out)")
               for p in ("presence_penalty", "frequency_penalty") if getattr(self, p)]
        if self.logit_bias:
            out.append(("logit_bias", "is not supported by this server"))
        if self.stream_options is not None and not self.stream:
            out.append(("stream_options", "is only allowed when stream is true"))
        return out


class ChatRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        out += [(p, "(function calling) is not supported by this server") for p in ("tools", "functions")
                if getattr(self, p)]
        if self.response_format and self.response_format.get("type", "text") != "text":
            out.append(("response_format", "only {\"type\": \"text\"} is supported by this server"))
        if self.top_logprobs and not self.logprobs:
            out.append(("top_logprobs", "needs logprobs: true"))
        return out


class CompletionRequest(_Sampling):
    """POST /v1/completions: text (or token ids) in, no chat template."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """The prompts of the batch: each a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.echo:
            out.append(("echo", "is not supported by this server"))
        if self.suffix:
            out.append(("suffix", "is not supported by this server"))
        if self.best_of is not None and self.best_of != (self.n or 1):
            out.append(("best_of", "is not supported by this server (leave it out, or equal to n)"))
        if not self.prompts() or any(len(x) == 0 for x in self.prompts() if not isinstance(x, str)):
            out.append(("prompt", "must not be empty"))
        return out


R = TypeVar("R", bound=_Sampling)

_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content' (union-member tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.lower() in _TYPE_TAGS or any(c in part for c in "[(-") or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def parse_body(cls: type[R], raw: bytes) -> R:
    """The request model of a JSON body; malformed JSON or a bad value is a 400 naming the field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        req = cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        param = _param(err["loc"])
        if err["type"] == "missing":
            raise bad_request(param, f"missing required parameter '{param}'", "missing_required_parameter") from None
        msgs = dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors if _param(e["loc"]) == param)
        msg = " or ".join(msgs)  # a union field: what each accepted form wanted
        shown = json.dumps(err.get("input"), default=str)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise bad_request(param, f"invalid value for '{param}': {msg} (got {shown})") from None
    for param, why in req.unsupported():
        raise bad_request(param, f"'{param}' {why}", "unsupported_parameter")
    return req
