"""Where stages write: output folders checked before any work starts.

`prepare_out` is the one check every verb with `--out` runs first:
  - a file in place of the folder is refused;
  - an output inside an input (or holding one) is refused: a rerun would read its own outputs as data;
  - a folder that is not empty is refused unless `--overwrite` is given;
  - with `--overwrite`, only what the verb writes is replaced. Earlier outputs of the verb that this
    run may not rewrite (a stale rejects.jsonl, an old export step) are removed only when the folder
    holds the verb's own marker file (its report), so it is known to be ours; anything else is kept.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import ui
from ..errors import UsageError

GLOB_CHARS = "*?["
LISTED = 5  # entries of a non-empty folder named in the message; the rest are counted


def out_dir(path: str | Path, flag: str = "--out") -> Path:
    """The output folder `path`, created if needed; a file in its place is one clear error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file; give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def input_root(spec: str | os.PathLike) -> Path:
    """The file or folder an input reads, resolved: a glob's fixed part before its first wildcard."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    if not path.exists() and any(c in text for c in GLOB_CHARS):
        fixed = []
        for part in path.parts:
            if any(c in part for c in GLOB_CHARS):
                break
            fixed.append(part)
        path = Path(*fixed) if fixed else Path(".")
    return path.resolve()


def check_not_inside_inputs(out: str | Path, inputs: Iterable[str | os.PathLike | None], flag: str = "--out"
                            ) -> None:
    """Refuse an output that is an input, lies inside one, or holds one. Inputs that do not exist on
    disk (a hub id, a bundled model name) are skipped: nothing of them can be read back or replaced."""
    target = Path(out).expanduser().resolve()
    for spec in inputs:
        if spec is None or str(spec) == "":
            continue
        root = input_root(spec)
        if not root.exists():
            continue
        if target == root or target.is_relative_to(root):
            raise UsageError(f"{flag} {out} is inside the input {spec}; a rerun would read its own outputs as "
                             "data; choose a folder outside it")
        if root.is_relative_to(target):
            raise UsageError(f"{flag} {out} contains the input {spec}; a rerun would read its own outputs as "
                             "data (and --overwrite would replace files next to it); choose a folder outside it")


def _names(entries: Sequence[Path]) -> str:
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:LISTED])
    more = f" and {len(entries) - LISTED} more" if len(entries) > LISTED else ""
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown}{more}"


def _remove(path: Path) -> None:
    """Remove one earlier output (a link is removed, never what it points to)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def prepare_out(path: str | Path, *, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = (),
                flag: str = "--out", writes: Sequence[str] = (), marker: str | Sequence[str] = (),
                log=ui.log) -> Path:
    """Check and create the output folder `path` before any work; returns it.

    overwrite: the user's --overwrite; without it a non-empty folder is refused.
    inputs:    files, folders or globs the verb reads (a glob counts as its fixed leading folder).
    writes:    names (files or folders) directly under `path` that the verb writes.
    marker:    the name(s) of the verb's own report; when one is present, earlier outputs in `writes`
               are removed before the run (so none is left stale), otherwise they are only replaced
               as they are rewritten. Entries not in `writes` are never touched.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is a file; give a folder (it is created if missing)")
    check_not_inside_inputs(out, inputs, flag)
    entries = sorted(out.iterdir()) if out.is_dir() else []
    ours = [p for p in entries if p.name in writes]
    if entries and not overwrite:
        what = f" ({', '.join(writes)})" if writes else ""
        raise UsageError(f"{flag} {out} is not empty ({_names(entries)}); add --overwrite to replace the files "
                         f"this command writes there{what}, or choose another {flag}")
    if entries:
        markers = (marker,) if isinstance(marker, str) else tuple(marker)
        others = [p for p in entries if p.name not in writes]
        kept = f"; kept untouched: {_names(others)}" if others else ""
        if ours and any((out / m).is_file() for m in markers):
            for p in ours:
                _remove(p)
            log(f"--overwrite: removed the earlier outputs in {out} ({_names(ours)}){kept}")
        elif ours:
            log(f"--overwrite: replacing {_names(ours)} in {out} as they are rewritten{kept}")
        else:
            log(f"--overwrite: writing into {out}; nothing in it is replaced{kept}")
    out.mkdir(parents=True, exist_ok=True)
    return out
