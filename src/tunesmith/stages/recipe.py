"""The recipe: every stage's config composed, one section per stage.

    model:   models.ModelConfig        data:    stages.data.DataConfig
    curate:  stages.curate.CurateConfig     select:  stages.select.SelectConfig (optional)
    synth:   stages.synth.SynthSection (optional: synthetic data made first, into RUN/synth)
    train:   train.config.TrainConfig  eval:    stages.evaluate.EvalConfig
    export:  stages.export.ExportOptions   output:  OutputConfig

A recipe is read from YAML, dotted overrides (`--train.lr 1e-4`) are applied, then everything is
validated; unknown keys are errors. The same fields are the flags of `tunesmith run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ..config import Section, apply_overrides, build, dump, read_yaml
from ..errors import UsageError
from ..models import ModelConfig
from ..train.config import TrainConfig
from .curate import CurateConfig
from .data import DataConfig
from .evaluate import EvalConfig
from .export import ExportOptions
from .select import SelectConfig
from .synth import SynthSection

MOVED = {"data.curate": "curate", "data.select": "select"}  # keys that became sections of their own


class OutputConfig(Section):
    """Where the run directory goes."""

    dir: str = Field("runs/quickstart", description="run directory")
    merge: bool = Field(True, description="write a merged full model in safetensors next to the adapter")


class Recipe(Section):
    """A whole job: data -> curate -> select -> train -> evaluate, into one run directory."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    curate: CurateConfig = CurateConfig()
    select: SelectConfig | None = Field(None, description="data selection (absent: train on the whole pool)")
    synth: SynthSection | None = Field(None, description="verifier-filtered synthetic data made first into "
                                                         "RUN/synth; its output joins data.train (absent: none)")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportOptions = ExportOptions()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _need_data(self) -> "Recipe":
        synth = self.synth is not None and self.synth.feed != "none"
        if not self.data.train and (self.data.tasks is None or self.data.tasks.n_train == 0) and not synth:
            raise ValueError("no training data: set data.train (files), data.tasks (generated) and/or synth")
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


def load_recipe(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe YAML (or start from defaults), apply overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    origin = str(path) if path is not None else "command line"
    raw = apply_overrides(raw, overrides or {})
    _moved_keys(raw, origin)
    recipe = build(Recipe, raw, origin)
    if path is not None:
        base = Path(path).parent
        recipe.data.train = _relative_to_recipe(recipe.data.train, base)
        recipe.data.eval = _relative_to_recipe(recipe.data.eval, base)
        if recipe.curate.decontaminate is not None:
            decontam = recipe.curate.decontaminate
            decontam.eval_files = _relative_to_recipe(decontam.eval_files, base)
        if recipe.select is not None:
            recipe.select.target = _relative_to_recipe(recipe.select.target, base)
        if recipe.synth is not None:
            recipe.synth.prompts = _relative_to_recipe(recipe.synth.prompts, base)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to the run directory as config.yaml)."""
    return dump(recipe)
