"""The data half of a recipe: data (read + generate) -> curate -> select -> tokenize.

Each step counts what it kept and writes what it dropped (rejects.jsonl, curation/, selection/),
and the data report checks that kept + rejected + removed == records in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.samples import require_pairs
from ..models import ModelConfig
from .curate import CurateConfig, curate
from .data import DataBundle, DataConfig, held_out, load, tokenize
from .select import SelectConfig, select_examples


def prepare_data(data: DataConfig, curation: CurateConfig, selection: SelectConfig | None, model: ModelConfig,
                 tokenizer, run_dir: Path | None, objective: str = "sft") -> DataBundle:
    """Everything data before training; raises DataError under data.on_error: fail.

    objective "dpo": the rows are preference pairs (checked right after reading, before any
    curation or selection work) and are tokenized as pairs."""
    rejects_path = run_dir / "rejects.jsonl" if run_dir is not None else None
    loaded = load(data, rejects_path)
    if objective == "dpo":
        require_pairs(loaded.examples)
    examples = loaded.examples
    refined: dict[str, Any] = {}
    if curation.active:
        examples, refined = curate(examples, curation, run_dir, held_out(data), eval_files=data.eval)
    if selection is not None:
        examples, refined["select"] = select_examples(examples, selection, model, data.max_seq_len, data.format,
                                                      run_dir)
    if refined:
        refined["removed"] = len(loaded.examples) - len(examples)
    bundle = tokenize(data, tokenizer, loaded, examples, refined.get("removed", 0), rejects_path,
                      pairs=objective == "dpo")
    if refined:
        bundle.report["curation_and_selection"] = refined
    return bundle
