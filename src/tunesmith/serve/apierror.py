"""Errors the HTTP API answers, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every refusal (bad value, missing key, too many requests) is one APIError raised anywhere below a
route and turned into one JSON response by the app's handler, so clients such as the official
`openai` library raise their matching exception (BadRequestError, AuthenticationError, ...).
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A refusal with its HTTP status, OpenAI error type, offending parameter and code."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    """A 400 naming the parameter at fault."""
    return APIError(400, message, "invalid_request_error", param, code)
