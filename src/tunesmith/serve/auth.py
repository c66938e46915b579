"""API keys: where they come from, which hosts need one, and the check on every request.

Keys come from --api-key-file (one key per line; blank lines and # comments skipped) and from the
environment variable TUNESMITH_API_KEY. A client sends `Authorization: Bearer KEY` (what the
`openai` library sends). Keys are compared in constant time. Binding anything but a loopback
address without a key is refused before the model loads.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from ..errors import UsageError
from .apierror import APIError

ENV_KEY = "TUNESMITH_API_KEY"


def load_keys(key_file: str | None, environ: dict[str, str] | None = None) -> list[str]:
    """The accepted keys: the file's lines and $TUNESMITH_API_KEY (none: no key is asked)."""
    env = os.environ if environ is None else environ
    keys = [env[ENV_KEY].strip()] if env.get(ENV_KEY, "").strip() else []
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"--api-key-file {key_file}: no such file; write one API key per line") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--api-key-file {key_file} cannot be read ({exc}); give a UTF-8 text file with "
                             "one API key per line") from None
        found = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise UsageError(f"--api-key-file {key_file} holds no key; write one API key per line")
        keys += found
    return keys


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to any interface


def check_exposure(host: str, keys: list[str]) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if not keys and not is_loopback(host):
        raise UsageError(f"--host {host} accepts connections from other machines, so it needs an API key: give "
                         f"--api-key-file FILE or set {ENV_KEY} (or keep the default --host 127.0.0.1)")


class KeyCheck:
    """The check of every route but /health: 401 unless the bearer token is an accepted key."""

    def __init__(self, keys: list[str]):
        self._keys = [k.encode("utf-8") for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __call__(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("utf-8")
        ok = False
        for key in self._keys:  # every key is compared, so the time does not tell which one nearly matched
            ok |= hmac.compare_digest(given, key)
        if scheme.lower() != "bearer" or not ok:
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer KEY' with a key this "
                                "server accepts", "invalid_request_error", None, "invalid_api_key")
