"""The recipe: every stage's config composed, one section per stage.

    model:   models.ModelConfig        data:    stages.data.DataConfig
    curate:  stages.curate.CurateConfig     select:  stages.select.SelectConfig (optional)
    synth:   stages.synth.SynthSection (optional: synthetic data made first, into RUN/synth)
    train:   train.config.TrainConfig  eval:    stages.evaluate.EvalConfig
    replay:  stages.replay.ReplayConfig (the base's own answers mixed into SFT training; ratio 0: off)
    export:  stages.export.ExportOptions   output:  OutputConfig
    then:    [Phase]: further runs, each from the previous one's merged model (see `phase_recipe`)

A recipe is read from YAML, dotted overrides (`--train.lr 1e-4`) are applied, then everything is
validated; unknown keys are errors. The same fields are the flags of `tunesmith run`.

A phase of `then:` is the recipe again with the phase's keys merged over the recipe's own (as the
recipe YAML would read with those keys changed; nested sections merge key by key, lists and values
replace), validated by the same models (its errors name `then[i].section.key`), with what a phase
cannot choose fixed: it starts from the previous phase's merged model (`RUN/model` for the first),
writes into `RUN/phases/<name>/`, and its base evaluation is the previous phase's `eval/after`. Its
training rows are its own: when its synth section feeds training data and the phase names no
`data.train` / `data.tasks.n_train` of its own, it trains on that synth output only (the recipe's
files and generated training tasks are not inherited; its held-out items are).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_serializer, model_validator

from ..config import Section, apply_overrides, build, dump, format_errors, read_yaml
from ..errors import UsageError
from ..models import ModelConfig
from ..train.config import TrainConfig
from .curate import CurateConfig
from .data import DataConfig
from .evaluate import EvalConfig
from .export import ExportOptions
from .replay import ReplayConfig
from .select import SelectConfig
from .synth import SynthSection

MOVED = {"data.curate": "curate", "data.select": "select"}  # keys that became sections of their own
PATH_KEYS = ("data.train", "data.eval", "curate.decontaminate.eval_files", "select.target", "synth.prompts")
PHASE_FIXED = {"model.name": "a phase starts from the previous phase's merged model",
               "output.dir": "a phase writes into RUN/phases/<name>/",
               "eval.before": "a phase's base evaluation is the previous phase's eval/after",
               "then": "phases do not nest: list every phase in the recipe's own then:"}
PHASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class OutputConfig(Section):
    """Where the run directory goes."""

    dir: str = Field("runs/quickstart", description="run directory")
    merge: bool = Field(True, description="write a merged full model in safetensors next to the adapter")


class Phase(Section):
    """One entry of `then:`: its name (its folder RUN/phases/<name>/) and the recipe keys it changes."""

    name: str
    changes: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, value: Any) -> Any:
        """Written as {name, section: {...}, ...}: everything but the name is a change."""
        if isinstance(value, dict) and "changes" not in value:
            return {"name": value.get("name"), "changes": {k: v for k, v in value.items() if k != "name"}}
        return value

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        return {"name": self.name, **self.changes}


class Recipe(Section):
    """A whole job: data -> curate -> select -> train -> evaluate, into one run directory."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    curate: CurateConfig = CurateConfig()
    select: SelectConfig | None = Field(None, description="data selection (absent: train on the whole pool)")
    synth: SynthSection | None = Field(None, description="verifier-filtered synthetic data made first into "
                                                         "RUN/synth; its output joins data.train (absent: none)")
    train: TrainConfig = TrainConfig()
    replay: ReplayConfig = ReplayConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportOptions = ExportOptions()
    output: OutputConfig = OutputConfig()
    then: list[Phase] = Field([], description="further phases, each a run from the previous one's merged model "
                                              "into RUN/phases/<name>/: [{name: dpo, train: {objective: dpo}, "
                                              "synth: {feed: pairs}}] (keys merge over the recipe's)")

    @model_validator(mode="after")
    def _need_data(self) -> "Recipe":
        synth = self.synth is not None and self.synth.feed != "none"
        if not self.data.train and (self.data.tasks is None or self.data.tasks.n_train == 0) and not synth:
            raise ValueError("no training data: set data.train (files), data.tasks (generated) and/or synth")
        return self

    @model_validator(mode="after")
    def _kl_needs_replay(self) -> "Recipe":
        if self.train.kl_to_base and not self.replay.ratio:
            raise ValueError("train.kl_to_base pulls the replay rows' answers towards the base model: set "
                             "replay.ratio > 0 (e.g. 0.25), or train.kl_to_base: 0")
        return self

    @model_validator(mode="after")
    def _own_eval_set(self) -> "Recipe":
        """data.eval is scored by generation too (the `data` suite) unless eval.suites says otherwise."""
        if self.data.eval and "suites" not in self.eval.model_fields_set and "data" not in self.eval.suites:
            self.eval.suites = [*self.eval.suites, "data"]
        if "data" in self.eval.suites and not self.data.eval:
            raise ValueError("eval.suites has 'data' (your own held-out conversations) but data.eval is empty: "
                             "set data.eval to your eval file(s)")
        return self


def _moved_keys(raw: dict[str, Any], origin: str) -> None:
    data = raw.get("data")
    for old, new in MOVED.items():
        if isinstance(data, dict) and old.split(".")[1] in data:
            raise UsageError(f"{origin}: {old} is now the top-level section `{new}:` (move it out of `data:`)")


def _relative_to_recipe(paths: list, base: Path) -> list:
    """Data paths in a recipe are relative to its folder, unless they exist from the working directory.
    An entry may be a path or a source with a `path` ({path, format, columns})."""
    def fix(p: str) -> str:
        keep = Path(p).exists() or any(c in p for c in "*?[") or Path(p).is_absolute() or not (base / p).exists()
        return p if keep else str(base / p)
    return [fix(p) if isinstance(p, str) else p.model_copy(update={"path": fix(p.path)}) for p in paths]


def _fix_paths(recipe: Recipe, base: Path) -> None:
    """Every path list of PATH_KEYS made relative to the recipe's folder (idempotent)."""
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = recipe
        for part in parents:
            node = getattr(node, part) if node is not None else None
        if node is not None:
            setattr(node, leaf, _relative_to_recipe(list(getattr(node, leaf)), base))


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe YAML (or start from defaults), apply overrides, validate (phases too)."""
    raw = read_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "command line"
    raw = apply_overrides(raw, overrides or {})
    _moved_keys(raw, origin)
    phases = raw.pop("then", None)
    recipe = build(Recipe, raw, origin)
    base = Path(path).parent if path is not None else None
    if base is not None:
        _fix_paths(recipe, base)
    if phases:
        recipe.then = _phases(recipe, phases, origin, base)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to the run directory as config.yaml)."""
    return dump(recipe)


# ---- phases (`then:`) ------------------------------------------------------------------------------

def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: mappings key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get(raw: Any, dotted: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in raw mappings; `model: NAME` is model.name."""
    node = raw
    for part in dotted.split("."):
        if part == "name" and isinstance(node, str):  # the bare `model: NAME`
            return True, node
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _merged_raw(parent: Recipe, changes: dict[str, Any]) -> dict[str, Any]:
    """The parent's keys as given (every key set, resolved paths), the phase's changes merged over them,
    and the phase's own training rows: with a synth section that feeds training data and no data.train
    or data.tasks.n_train of its own, the phase trains on the synth output only."""
    raw = _merge(parent.model_dump(mode="json", exclude_unset=True, exclude={"then"}), changes)
    synth = raw.get("synth")
    feeds = isinstance(synth, dict) and synth.get("feed", "sft") != "none"
    data = raw.get("data")
    if feeds and isinstance(data, dict):
        if not _get(changes, "data.train")[0]:
            data["train"] = []
        if isinstance(data.get("tasks"), dict) and not _get(changes, "data.tasks.n_train")[0]:
            data["tasks"]["n_train"] = 0
    return raw


class _Prefixed:
    """A ValidationError whose keys are shown under a prefix (then[0].train.lr)."""

    def __init__(self, exc: ValidationError, prefix: str):
        self.exc, self.prefix = exc, prefix

    def errors(self) -> list[dict[str, Any]]:
        return [{**e, "loc": (self.prefix, *e["loc"])} for e in self.exc.errors()]


def _build_phase(parent: Recipe, phase: Phase, where: str, origin: str) -> Recipe:
    try:
        return Recipe.model_validate(_merged_raw(parent, phase.changes))
    except ValidationError as exc:
        raise UsageError(format_errors(_Prefixed(exc, where), origin)) from None  # type: ignore[arg-type]


def parent_label(recipe: Recipe) -> str:
    """The recipe's own tuned model in a comparison with its phases: its objective (sft or dpo)."""
    return recipe.train.objective


def _phases(parent: Recipe, raw: Any, origin: str, base: Path | None) -> list[Phase]:
    """Validate `then:`: names, the keys a phase may not set, every phase as a whole recipe; phase paths are
    resolved against the recipe's folder like its own."""
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise UsageError(f"{origin}: then: must be a list of phases, each a mapping with a name and the keys it "
                         "changes (e.g. then: [{name: dpo, train: {objective: dpo}}])")
    if not parent.output.merge:
        raise UsageError(f"{origin}: output.merge: false, but then: starts each phase from the previous run's merged "
                         "model (RUN/model): set output.merge: true")
    phases, seen = [], {"base": "names the base model", parent_label(parent): "names the recipe's own tuned model"}
    for i, entry in enumerate(raw):
        where = f"then[{i}]"
        name = entry.get("name")
        if not isinstance(name, str) or not PHASE_NAME.fullmatch(name) or name in (".", ".."):
            raise UsageError(f"{origin}: {where}.name: {'required' if name is None else repr(name)}: a phase needs a "
                             "name that is a folder name (letters, digits, '_', '-', '.'; at most 64)")
        if name.lower() in seen:
            raise UsageError(f"{origin}: {where}.name: {name!r} {seen[name.lower()]} in the comparison; phase names "
                             f"are unique and neither 'base' nor the recipe's train.objective ({parent_label(parent)})")
        seen[name.lower()] = f"is also then[{i}].name"
        phase = Phase(name=name, changes={k: v for k, v in entry.items() if k != "name"})
        _moved_keys(phase.changes, f"{origin}: {where}")
        for key, why in PHASE_FIXED.items():
            if _get(phase.changes, key)[0]:
                raise UsageError(f"{origin}: {where}.{key}: cannot be set in a phase ({why})")
        built = _build_phase(parent, phase, where, origin)
        if not built.output.merge and i < len(raw) - 1:
            raise UsageError(f"{origin}: {where}.output.merge: false, but the next phase starts from this phase's "
                             "merged model: set it to true (only the last phase may skip it)")
        if base is not None:  # the phase's own paths, resolved like the recipe's, stored in its changes
            _fix_paths(built, base)
            resolved = built.model_dump(mode="json")
            for dotted in PATH_KEYS:
                if _get(phase.changes, dotted)[0]:
                    *parents, leaf = dotted.split(".")
                    node = phase.changes
                    for part in parents:
                        node = node[part]
                    node[leaf] = _get(resolved, dotted)[1]
        phases.append(phase)
    return phases


def phase_recipe(parent: Recipe, phase: Phase, start_model: str | Path, run_dir: str | Path) -> Recipe:
    """The recipe a phase runs: the parent's keys with the phase's merged over them, from `start_model` (the
    previous phase's merged model) into `run_dir`, without a base evaluation of its own."""
    where = next((f"then[{i}]" for i, p in enumerate(parent.then) if p.name == phase.name), f"then ({phase.name})")
    built = _build_phase(parent, phase, where, "recipe")
    return built.model_copy(update={
        "model": built.model.model_copy(update={"name": str(start_model)}),
        "output": built.output.model_copy(update={"dir": str(run_dir)}),
        "eval": built.eval.model_copy(update={"before": False}),
    })
