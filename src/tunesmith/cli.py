"""The command line: one table of verbs -> stages. Each verb's flags are generated from its
stage's config (same names as the recipe keys, same defaults, help from the field descriptions);
nested fields are dotted flags (`--train.lr 1e-4`, `--less.dim 2048`). Unknown flags are refused.

Exit codes: 0 ok, 1 failure a user can fix (message, no traceback), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import __version__
from .errors import UserError


@dataclass(frozen=True)
class Verb:
    """A verb: its words, its stage config and run function, and its positional arguments.

    positional: (field path, help) pairs; a field path "model.name" fills a nested field.
    recipe: the first positional may be a recipe YAML (or, for data check, a data file).
    switches: verb-only on/off flags passed to `run` as keywords (--resume, --overwrite).
    """

    words: tuple[str, ...]
    help: str
    config: str  # "module:Class", imported on use so `--help` stays fast
    run: str  # "module:function"
    positional: tuple[tuple[str, str], ...] = ()
    recipe: bool = False
    switches: tuple[tuple[str, str], ...] = ()
    optional_positional: bool = False
    many: bool = False  # the positional takes one or more values (a list field)


RESUME = ("resume", "continue from the latest complete checkpoint")
OVERWRITE = ("overwrite", "start again in an output.dir that holds an earlier run")
OUT_OVERWRITE = ("overwrite", "write into a non-empty --out: the files this command writes are replaced, "
                              "nothing else is touched")
RECIPE_HELP = "recipe YAML (see recipes/quickstart.yaml)"

VERBS: tuple[Verb, ...] = (
    Verb(("run",), "data -> curate -> select -> eval base -> train -> merge -> eval tuned, into one run directory",
         "stages.recipe:Recipe", "stages.run:run_recipe", (("recipe", RECIPE_HELP),), True, (RESUME, OVERWRITE)),
    Verb(("train",), "data -> curate -> select -> train -> save adapter and merged model (no evaluation)",
         "stages.recipe:Recipe", "stages.run:train_recipe", (("recipe", RECIPE_HELP),), True, (RESUME, OVERWRITE)),
    Verb(("data", "check"), "validate, tokenize and mask data; report every file, its format, and every bad row "
         "with file:line", "stages.recipe:Recipe", "stages.run:check_recipe",
         (("recipe", "a recipe YAML, or a data file/folder/glob (sets data.train)"),), True,
         switches=(OUT_OVERWRITE, ("validate_only", "read and validate rows only, streaming in flat memory "
                                                    "(no tokenizer, no curation)")), optional_positional=True),
    Verb(("data", "dedup"), "remove exact and near-duplicate rows (MinHash LSH); report every cluster",
         "stages.curate:DedupVerbConfig", "stages.curate:run_dedup", (("data", "file, folder or glob"),),
         switches=(OUT_OVERWRITE,)),
    Verb(("data", "decontaminate"), "drop rows whose user turns overlap eval prompts (word n-grams)",
         "stages.curate:DecontamVerbConfig", "stages.curate:run_decontaminate", (("data", "file, folder or glob"),),
         switches=(OUT_OVERWRITE,)),
    Verb(("data", "select"), "choose the examples worth training on (random, stratified, loss, rds, ifd, less, kmeans, zipfit)",
         "stages.select:SelectVerbConfig", "stages.select:run_select", (("data", "pool: file, folder or glob"),),
         switches=(OUT_OVERWRITE,)),
    Verb(("eval",), "evaluate a model or a run directory on chosen suites; per-item records in JSON",
         "stages.evaluate:EvalVerbConfig", "stages.evaluate:run_eval",
         (("model.name", "run directory (uses RUN/model), model directory, .gguf, bundled name or hub id "
                         "(or --model)"),),
         switches=(("overwrite", "replace existing eval/<label>/<suite>.json files"),), optional_positional=True),
    Verb(("compare",), "models scored on the same items side by side: bootstrap intervals and paired "
         "differences to the first (a run directory brings its base, tuned model and phases)",
         "stages.compare:CompareConfig", "stages.compare:run_compare",
         (("runs", "run directories or eval/<label>/ folders; the first is the base"),),
         switches=(OUT_OVERWRITE,), many=True),
    Verb(("report",), "one self-contained HTML page of a run (RUN/report.html: data funnel, curves, evaluation with "
         "an item browser, exports, provenance); several runs: one comparison page",
         "stages.report:ReportConfig", "stages.report:run_report",
         (("runs", "run directories; two or more are compared side by side"),), many=True),
    Verb(("export",), "merged, interpolate (WiSE-FT), int8, int4-rtn, int4-awq, gguf-f32|f16|q8_0|q4_0; "
         "'export soup A B ...' blends models", "stages.export:ExportVerbConfig", "stages.export:run_export",
         (("sources", "a run directory or model folder (after 'soup': two or more)"),),
         switches=(OUT_OVERWRITE,), many=True),
    Verb(("synth",), "verifier-filtered synthetic data (RAFT): K samples per prompt scored by verifiers -> sft.jsonl, "
         "pairs.jsonl, report", "stages.synth:SynthVerbConfig", "stages.synth:run_synth", switches=(OUT_OVERWRITE, (
             "resume", "continue the synth run in --out: stored samples are reused, not generated again"))),
    Verb(("generate",), "complete prompts with a model", "stages.generate:GenerateConfig", "stages.generate:run_generate"),
    Verb(("chat",), "talk to a model in the terminal", "stages.generate:ChatConfig", "stages.generate:run_chat"),
    Verb(("serve",), "OpenAI-compatible HTTP API (chat/completions, completions, models, metrics) with keys "
         "and limits", "stages.serve:ServeConfig", "stages.serve:run_serve",
         (("model.name", "run directory (serves RUN/model), model directory, .gguf, quantized export folder or "
                         "bundled name (or --model)"),), optional_positional=True),
)
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".gz")


def _load(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(f"tunesmith.{module}"), name)


# ---- flags from a config class ----------------------------------------------------------------

def _section_class(annotation: Any) -> type[BaseModel] | None:
    """The config class inside `X`, `X | None`; None for a leaf field."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    found = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return found[0] if found else None


def _is_list(annotation: Any) -> bool:
    """A list field (or list | None): its flag may be repeated and takes 'a,b' or '[a, b]'."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    return all(typing.get_origin(a) is list or a is type(None) for a in args) and \
        any(typing.get_origin(a) is list for a in args)


def leaf_fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, FieldInfo) of every leaf field of a config, sections flattened. A section that
    takes a bare value (`model: NAME`) is also a leaf of its own."""
    out = []
    for name, info in cls.model_fields.items():
        section = _section_class(info.annotation)
        if section is None or getattr(section, "bare_value", None):
            out.append((f"{prefix}{name}", info))
        if section is not None:
            out += leaf_fields(section, f"{prefix}{name}.")
    return out


def _help(info) -> str:
    text = info.description or ""
    if info.default is not PydanticUndefined and info.default not in (None, [], "") and \
            not isinstance(info.default, BaseModel):
        text += f" (default: {info.default})"
    elif info.default is PydanticUndefined:
        text += " (required)"
    return (text.strip() or " ").replace("%", "%%")  # argparse formats help with %


class _Append(argparse.Action):
    """List flags: repeatable, each value 'a,b' or '[a, b]' or one item."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = getattr(namespace, self.dest, None) or []
        from .config import parse_value

        parsed = parse_value(value)
        if isinstance(parsed, list):
            items += parsed
        else:
            items += [v.strip() for v in str(value).split(",") if v.strip()]
        setattr(namespace, self.dest, items)


def add_config_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], skip: set[str]) -> None:
    """One flag per leaf field: --a.b.c (and --name / --name-with-dashes at the top level)."""
    for dotted, info in leaf_fields(cls):
        if dotted in skip:
            continue
        names = [f"--{dotted}"]
        if "." not in dotted and "_" in dotted:
            names.insert(0, f"--{dotted.replace('_', '-')}")
        bare = getattr(_section_class(info.annotation), "bare_value", None)  # --model NAME sets model.name
        dest = f"cfg:{dotted}.{bare}" if bare else f"cfg:{dotted}"
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": _help(info)}
        if info.annotation is bool:
            parser.add_argument(*names, nargs="?", const="true", metavar="BOOL", **kw)
            if "." not in dotted:
                parser.add_argument(f"--no-{dotted.replace('_', '-')}", action="store_const", const="false",
                                    dest=kw["dest"], default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        elif _is_list(info.annotation):
            parser.add_argument(*names, action=_Append, metavar="A,B", **kw)
        else:
            choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else ()
            parser.add_argument(*names, metavar="|".join(map(str, choices)) or "VALUE", **kw)


# ---- parser and dispatch --------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description="Data-aware, trustworthy, efficient instruction tuning.",
                                epilog="Every flag is a config key: nested keys are dotted (--train.lr 1e-4).")
    p.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = p.add_subparsers(dest="verb", required=True)
    groups: dict[str, Any] = {}
    for verb in VERBS:
        parent = sub
        if len(verb.words) == 2:
            if verb.words[0] not in groups:
                groups[verb.words[0]] = sub.add_parser(verb.words[0], help=f"{verb.words[0]} tools").add_subparsers(
                    dest=f"{verb.words[0]}_verb", required=True)
            parent = groups[verb.words[0]]
        sp = parent.add_parser(verb.words[-1], help=verb.help, description=verb.help.replace("%", "%%"))
        for path, hlp in verb.positional:
            sp.add_argument(f"pos:{path}", metavar=path.split(".")[0].upper(), help=hlp,
                            nargs="+" if verb.many else "?" if verb.optional_positional else None)
        for name, hlp in verb.switches:
            sp.add_argument(f"--{name}", action="store_true", dest=f"switch:{name}", help=hlp)
        if verb.recipe and verb.words == ("data", "check"):
            sp.add_argument("--out", dest="switch:out", help="folder for data_report.json and rejects.jsonl")
        sp.set_defaults(_verb=verb)
        sp.set_defaults(_lazy=True)
    return p


def _add_flags_for(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Add the chosen verb's config flags to its subparser (only that verb's config is imported)."""
    words = [a for a in argv if not a.startswith("-")][:2]  # the verb's words come first
    for verb in VERBS:
        if tuple(words[: len(verb.words)]) == verb.words:
            sp = _subparser(parser, verb.words)
            add_config_flags(sp, _load(verb.config), {p for p, _ in verb.positional})
            return


def _subparser(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
    node = parser
    for word in words:
        action = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
        node = action.choices[word]
    return node


def _text_fields(cls: type[BaseModel]) -> set[str]:
    """Dotted names of the leaf fields that hold text (str or str | None)."""
    return {d for d, info in leaf_fields(cls) if info.annotation in (str, str | None, typing.Optional[str])} | \
        {d + ".name" for d, info in leaf_fields(cls) if getattr(_section_class(info.annotation), "bare_value", None)}


def _config(verb: Verb, args: argparse.Namespace):
    """The verb's config: recipe YAML (if any), then positionals, then flags; validated."""
    from .config import Verbatim, build

    text = _text_fields(_load(verb.config))
    given = {k[4:]: Verbatim(v) if k[4:] in text and isinstance(v, str) and v not in ("null", "~") else v
             for k, v in vars(args).items() if k.startswith("cfg:")}  # 'null' still clears an optional text
    positional = {k[4:]: [Verbatim(x) for x in v] if isinstance(v, list) else Verbatim(v)
                  for k, v in vars(args).items() if k.startswith("pos:") and v is not None}
    if verb.recipe:
        from .stages.recipe import load_recipe

        path = positional.get("recipe")
        if path is not None and Path(path).suffix not in (".yaml", ".yml"):
            if Path(path).suffix in DATA_SUFFIXES or Path(path).is_dir() or not Path(path).suffix:
                given = {"data.train": [path], **given}
                path = None
        return load_recipe(path, given)
    from .config import apply_overrides

    raw = apply_overrides({}, {**positional, **given})
    return build(_load(verb.config), raw, "tunesmith " + " ".join(verb.words), what="options")


def _quiet_libraries() -> None:
    """Our own progress bars and messages replace the libraries' chatter."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=r".*torch_dtype.*is deprecated.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        _add_flags_for(parser, argv)
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2), already printed
            return int(exc.code or 0)
        _quiet_libraries()
        verb: Verb = args._verb
        switches = {k[7:]: v for k, v in vars(args).items() if k.startswith("switch:")}
        return _load(verb.run)(_config(verb, args), **switches)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a full disk outside an atomic write (which says more): one message all the same
        from .io import is_disk_full

        if not is_disk_full(exc):
            raise
        print(f"error: no space left on the device writing {getattr(exc, 'filename', None) or 'a file'}: free some "
              "space (or write elsewhere) and run the command again (training: --resume continues from the last "
              "checkpoint)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept (training: complete checkpoints; continue with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
