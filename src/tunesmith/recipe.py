"""The YAML recipe schema: every key, its default, and validation with clear errors.

A recipe is loaded from YAML, then command-line overrides such as `--train.lr 1e-4` are applied
by dotted key, then everything is validated. Unknown keys are errors (a typo must not silently
fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UsageError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """Which model to tune."""

    name: str = "smollm2-135m-instruct"  # bundled name, local HF directory, .gguf path or hub id
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp32 is fastest on CPUs without bf16 units
    trust_remote_code: bool = False


class TaskData(_Section):
    """The built-in generator of verifiable tasks, as training data and held-out eval items."""

    n_train: int = Field(1600, ge=0)
    n_eval: int = Field(240, ge=0)
    seed: int = 0
    types: list[str] | None = None  # None: all task types


class CurateConfig(_Section):
    """Cleaning before selection and training (tunesmith.curate)."""

    dedup: bool = False  # exact (normalised hash) and, with near, MinHash near-duplicates
    near: bool = True
    near_threshold: float = Field(0.7, gt=0, le=1)  # Jaccard of content-word 3-grams
    decontaminate: bool = False  # drop rows whose user turns overlap eval prompts
    decontaminate_suites: list[str] = ["tasks"]  # tasks, robustness, ifbench, ifeval, humaneval
    decontaminate_threshold: float = Field(0.8, gt=0, le=1)


class SelectConfig(_Section):
    """Data selection (tunesmith.select): which examples of the cleaned pool to train on."""

    method: str  # random, stratified, rds, ifd, less, kmeans, zipfit, or a chain "ifd:50%,rds"
    budget: str  # a count ("400") or a share of the pool ("10%")
    target: list[str] = []  # files of target examples (rds, less, zipfit)
    target_tasks: int = Field(0, ge=0)  # or N generated task items per type as targets
    target_by: str = "task"
    stratify_by: str = "task"
    seed: int = 0


class DataConfig(_Section):
    """Training data: files and/or generated tasks, and what to do with unusable rows."""

    train: list[str] = []  # files, folders or globs (.jsonl .json .parquet .csv)
    eval: list[str] = []  # held-out conversations for the loss suite (default: generated eval tasks)
    format: Literal["auto", "alpaca", "sharegpt", "messages"] = "auto"
    tasks: TaskData | None = None
    on_error: Literal["fail", "skip"] = "fail"
    overlong: Literal["truncate", "drop", "fail"] = "truncate"
    max_seq_len: int = Field(1024, ge=8)
    curate: CurateConfig = CurateConfig()
    select: SelectConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, values: Any) -> Any:
        for key in ("train", "eval"):
            if isinstance(values, dict) and isinstance(values.get(key), str):
                values[key] = [values[key]]
        return values


class LoraConfig(_Section):
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainConfig(_Section):
    """The training loop."""

    method: Literal["lora", "full"] = "lora"
    lora: LoraConfig = LoraConfig()
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    batch_size: int = Field(16, ge=1)  # samples per optimizer step
    micro_batch_size: int | None = Field(None, ge=1)  # samples per forward (default: batch_size)
    # padding-free packing budget per forward (activation memory ~ this; a longer sample gets its own row)
    max_tokens_per_row: int = Field(1024, ge=8)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    loss_chunk_size: int = Field(512, ge=1)
    fused_lora: bool = True  # LoRA adapter product accumulated into the base GEMM (addmm) while training
    swiglu_recompute: bool = True  # SwiGLU MLPs keep only gate and up for backward (~30% less activation memory)
    save_every: int = Field(50, ge=1)  # steps between checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    tensorboard: bool = False
    threads: int | None = Field(None, ge=1)  # torch intra-op threads (default: torch's choice)

    @model_validator(mode="after")
    def _check_micro(self) -> "TrainConfig":
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        return self


class EvalConfig(_Section):
    """Evaluation before and after tuning, and cheap evaluation during training."""

    suites: list[str] = ["tasks", "loss"]  # tasks, loss, robustness, ifbench, ifeval, humaneval
    before: bool = True
    after: bool = True
    max_new_tokens: int = Field(32, ge=1)  # short-answer suites (tasks, robustness)
    long_max_new_tokens: int = Field(512, ge=1)  # open-ended suites (ifbench, ifeval, humaneval)
    batch_size: int = Field(32, ge=1)
    limit: int | None = Field(None, ge=1)  # items per suite (None: all)
    ifeval_items: int = Field(100, ge=1)
    humaneval_samples: int = Field(0, ge=0)  # >0: sampled completions per problem for pass@k
    every: int = Field(0, ge=0)  # evaluate every N training steps (0: off)
    during: list[str] = ["loss"]  # cheap suites to run during training
    during_limit: int | None = Field(64, ge=1)  # items per suite during training
    best_metric: str | None = None  # e.g. "loss" or "tasks": keep the best checkpoint by it
    keep_best: bool = True  # with best_metric: the saved model is the best checkpoint, not the last

    @model_validator(mode="after")
    def _check_suites(self) -> "EvalConfig":
        from .evaluate.harness import SUITES

        for key in ("suites", "during"):
            unknown = [s for s in getattr(self, key) if s not in SUITES]
            if unknown:
                raise ValueError(f"unknown suite(s) {unknown} in eval.{key}; choose from {', '.join(SUITES)}")
        if self.best_metric is not None and self.best_metric not in self.during:
            raise ValueError(f"eval.best_metric '{self.best_metric}' must be one of eval.during {self.during}")
        if self.best_metric is not None and not self.every:
            raise ValueError("eval.best_metric needs eval.every > 0 (evaluations during training to compare)")
        return self


class OutputConfig(_Section):
    dir: str = "runs/quickstart"
    merge: bool = True  # write a merged full model in safetensors next to the adapter


class Recipe(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _need_data(self) -> "Recipe":
        if not self.data.train and (self.data.tasks is None or self.data.tasks.n_train == 0):
            raise ValueError("no training data: set data.train (files) and/or data.tasks (generated)")
        return self


def _parse_value(text: str) -> Any:
    """A command-line value as YAML would read it ('1e-4' -> 0.0001, 'true' -> True, '[a,b]' -> list)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; numbers should be numbers
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Set dotted keys (`train.lr` -> raw['train']['lr']) from command-line strings."""
    for dotted, text in overrides.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override --{dotted}: '{part}' is not a section")
        node[parts[-1]] = _parse_value(text)
    return raw


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid recipe"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see recipes/quickstart.yaml for every key)"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_recipe(path: str | Path | None, overrides: dict[str, str] | None = None) -> Recipe:
    """Read a recipe YAML (or start from defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    origin = "command line"
    if path is not None:
        path = Path(path)
        origin = str(path)
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
    raw = apply_overrides(raw, overrides or {})
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(_format_errors(exc, origin)) from None
    if path is not None:  # relative data paths are relative to the recipe's folder... unless they exist from cwd
        base = Path(path).parent
        fix = lambda p: p if Path(p).exists() or any(c in p for c in "*?[") or Path(p).is_absolute() or not (base / p).exists() else str(base / p)  # noqa: E731
        recipe.data.train = [fix(p) for p in recipe.data.train]
        recipe.data.eval = [fix(p) for p in recipe.data.eval]
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written to the run directory as config.yaml)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
