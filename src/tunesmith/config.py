"""Typed configuration: the base every stage's config derives from, YAML files and dotted overrides.

A config is a pydantic model whose fields are at once recipe keys and command-line flags (one
name, one default, one description). Values arrive from YAML, then dotted overrides such as
`train.lr=1e-4` are applied, then everything is validated. Unknown keys are errors: a typo must
never fall back silently to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UsageError

C = TypeVar("C", bound=BaseModel)


class Section(BaseModel):
    """A config section: unknown keys are refused; field descriptions become `--help` text."""

    model_config = ConfigDict(extra="forbid")


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it ('1e-4' -> 0.0001, 'true' -> True, '[a,b]' -> list)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; numbers should be numbers
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`train.lr` -> raw['train']['lr']); string values are read as YAML
    (except `Verbatim` ones)."""
    for dotted, value in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None or child is True:  # `section: true` (defaults) or absent: open it
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UsageError(f"override --{dotted}: '{part}' is not a section")
            node = child
        node[parts[-1]] = parse_value(value) if type(value) is str else value
    return raw


class Verbatim(str):
    """A command-line value for a text field: taken as typed, never read as YAML ('5' stays '5')."""


def format_errors(exc: ValidationError, origin: str, what: str = "recipe") -> str:
    """One line per problem, each naming its key (as a --flag for command-line options); a single
    problem is a single line."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if what == "options" and err["loc"]:
            key = "--" + key
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `tunesmith VERB --help` and recipes/quickstart.yaml list every key)"
        elif err["type"] == "missing":
            msg = "required"
        problems.append(f"{key}: {msg}")
    if len(problems) == 1:
        return f"{origin}: {problems[0]}"
    return "\n".join([f"{origin}: invalid {what}"] + [f"  {p}" for p in problems])


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; a missing file or bad YAML is one message with file:line."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UsageError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: a recipe is a mapping of sections (model, data, train, eval, output)")
    return raw


def build(cls: type[C], raw: dict[str, Any], origin: str, what: str = "recipe") -> C:
    """Validate `raw` as `cls`; problems end in one UsageError listing every bad key."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(format_errors(exc, origin, what)) from None


def dump(config: BaseModel) -> str:
    """A config as YAML (what a run writes as config.yaml)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def split_csv(value: Any) -> Any:
    """'a,b' -> ['a', 'b'] for list fields given on the command line; lists pass through."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value
