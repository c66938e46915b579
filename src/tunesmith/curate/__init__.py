"""Curation: exact and MinHash near-duplicate removal, and decontamination against eval prompts.

    from tunesmith.curate import dedup, DedupConfig, decontaminate, DecontamConfig, write_curated
    res = dedup(examples, DedupConfig(threshold=0.7))      # clusters + keep mask
    dec = decontaminate(examples, DecontamConfig(suites=("tasks", "ifbench")))
    write_curated(examples, res.keep, res.removed_reasons(), "out/dedup", res.summary())
"""

from .decontaminate import DecontamConfig, DecontamResult, EvalIndex, Hit, decontaminate
from .dedup import Cluster, DedupConfig, DedupResult, dedup
from .report import write_curated
from .suites import SUITES, EvalPrompt, eval_prompts

__all__ = ["dedup", "DedupConfig", "DedupResult", "Cluster", "decontaminate", "DecontamConfig", "DecontamResult",
           "EvalIndex", "Hit", "write_curated", "SUITES", "EvalPrompt", "eval_prompts"]
