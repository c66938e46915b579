"""Curation: exact and MinHash near-duplicate removal, and decontamination against eval prompts.

    from tunesmith.curate import dedup, DedupConfig, decontaminate, DecontamConfig, write_curated
    res = dedup(examples, DedupConfig(threshold=0.7))      # clusters + keep mask
    dec = decontaminate(examples, DecontamConfig(suites=("tasks", "ifbench")))
    write_curated(examples, res.keep, res.removed_reasons(), "out/dedup", res.summary())
"""

from tunesmith.evalsets.prompts import DEFAULT_SUITES, SUITES, EvalPrompt, eval_prompts, parse_suites

from .decontaminate import DecontamConfig, DecontamResult, EvalIndex, Hit, decontaminate
from .dedup import Cluster, DedupConfig, DedupResult, dedup
from .report import write_curated

__all__ = ["dedup", "DedupConfig", "DedupResult", "Cluster", "decontaminate", "DecontamConfig", "DecontamResult",
           "EvalIndex", "Hit", "write_curated", "SUITES", "DEFAULT_SUITES",
           "EvalPrompt", "eval_prompts", "parse_suites"]
