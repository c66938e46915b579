"""Decontamination: drop training rows whose user turns overlap an evaluation prompt.

Overlap is measured on word n-grams (default n = 8, as Tulu 3 does) of `text.word_tokens`
(NFKC, lower case, plain punctuation dropped; no stop-word removal):

* A user text of at least n tokens scores, against each eval prompt, the fraction of its distinct
  n-grams that occur in that prompt; its score is the best prompt's fraction. The fraction is
  taken on the *training* side, so a long training text that quotes a short eval prompt is not
  flagged, while a copy or light edit of an eval prompt is.
* A user text shorter than n tokens (an n-gram test cannot apply) falls back to a full-prompt
  match: it scores len(text) / len(eval prompt) against every eval prompt that contains it as a
  contiguous token sequence. An exact copy of a short eval prompt scores 1.0; a short phrase that
  merely occurs inside a longer eval prompt scores low.

A row is contaminated when its score is >= threshold (default 0.8). The default sits above
Tulu's 0.5 because generated task prompts share their instruction template: a fresh
`sort_numbers` prompt shares 55% of its 8-grams with every held-out `sort_numbers` prompt
through the template alone (measured on the fault pool; see BENCHMARKS.md), while copies of eval
items score 1.0. On free-form data 0.5 is a reasonable choice.

Besides the built-in suites, the user's own eval files (`eval_files`) are compared with: the user
turns of each of their conversations, one suite per file ("file:myeval.jsonl"), so the removal
counts show them by name.

The eval side is small (hundreds of prompts) and kept in sorted numpy arrays; the training side
streams in chunks and is looked up with `searchsorted`, so 10^6 rows need no per-n-gram Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tunesmith.data.example import Example
from tunesmith.errors import UsageError
from tunesmith.evalsets.prompts import DEFAULT_SUITES, EvalPrompt, eval_prompts

from .dedup import chunks
from .hashing import TokenHasher, flatten, ngram_hashes, whole_hashes
from .minhash import gather
from tunesmith.ui import progress_bar
from .text import user_text, word_tokens

SHOWN_CHARS = 300  # eval prompts longer than this are shortened in reports


@dataclass
class DecontamConfig:
    """Options of `decontaminate` (CLI: `tunesmith data decontaminate`).

    suites:    eval suites to index (evalsets.prompts.SUITES); may be empty when eval_files are given
    eval_files: the user's own eval sets (files, folders or globs), one suite "file:NAME" per file
    ngram:     word n-gram size
    threshold: overlap score (see module docstring) at or above which a row is dropped
    max_df:    an n-gram held by more than this many eval prompts is boilerplate and not counted
               (None = count every n-gram)
    tasks_n / seed / ifeval_n: which generated eval items the tasks, robustness and ifeval suites hold
    """

    suites: tuple[str, ...] = DEFAULT_SUITES
    ngram: int = 8
    threshold: float = 0.8
    max_df: int | None = 1
    tasks_n: int = 260
    seed: int = 0
    ifeval_n: int = 100
    chunk_size: int = 20_000
    eval_files: tuple[str, ...] = ()

    def validate(self) -> DecontamConfig:
        if not self.suites and not self.eval_files:
            raise UsageError("decontaminate: nothing to compare with; choose eval suites or give eval files")
        if self.ngram < 1:
            raise UsageError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(f"threshold must be an overlap fraction in (0, 1], got {self.threshold}")
        if self.max_df is not None and self.max_df < 1:
            raise UsageError(f"max_df must be >= 1 (or None), got {self.max_df}")
        if self.tasks_n < 0 or self.ifeval_n < 0 or self.chunk_size < 1:
            raise UsageError("tasks_n and ifeval_n must be >= 0 and chunk_size >= 1")
        return self


class _Table:
    """gram hash -> eval prompt ids, as a sorted unique key array plus a CSR list of ids."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray):
        order = np.lexsort((items, hashes))
        h, it = hashes[order], items[order]
        keep = np.r_[True, (h[1:] != h[:-1]) | (it[1:] != it[:-1])] if len(h) else np.empty(0, bool)
        h, it = h[keep], it[keep]
        starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]]) if len(h) else np.empty(0, np.int64)
        self.keys, self.items = h[starts], it
        self.ptr = np.r_[starts, len(h)].astype(np.int64)

    def lookup(self, hashes: np.ndarray, rows: np.ndarray, max_df: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, eval id) for every eval prompt holding each hash, and a mask of the hashes that
        are boilerplate (held by more than `max_df` eval prompts; those give no pairs)."""
        if not len(self.keys):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(len(hashes), bool)
        pos = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        found = self.keys[pos] == hashes
        boiler = np.zeros(len(hashes), bool)
        if max_df is not None:
            boiler = found & (self.ptr[pos + 1] - self.ptr[pos] > max_df)
            found &= ~boiler
        pos, rows = pos[found], rows[found]
        ids, owner = gather(self.items, self.ptr, pos)
        return rows[owner], ids, boiler


class EvalIndex:
    """Per suite: the n-grams of its eval prompts and, for short training texts, all shorter k-grams."""

    def __init__(self, prompts: Sequence[EvalPrompt], ngram: int = 8, max_df: int | None = 1):
        self.prompts, self.ngram, self.max_df = list(prompts), ngram, max_df
        self.hasher = TokenHasher()
        tokens, offsets = flatten([self.hasher(word_tokens(p.prompt)) for p in self.prompts])
        self.lengths = np.diff(offsets)
        self.tables: list[tuple[_Table, _Table]] = []  # (n-grams, shorter k-grams) per suite
        suites = np.array([p.suite for p in self.prompts])
        for suite in dict.fromkeys(suites.tolist()):
            mine = np.flatnonzero(suites == suite)
            h, rows = ngram_hashes(tokens, offsets, ngram, short="none")
            sel = np.isin(rows, mine)
            long = _Table(h[sel], rows[sel])
            parts = [ngram_hashes(tokens, offsets, k, short="none") for k in range(1, ngram)]
            hs = np.concatenate([p[0] for p in parts] or [np.empty(0, np.uint64)])
            rs = np.concatenate([p[1] for p in parts] or [np.empty(0, np.int64)])
            sel = np.isin(rs, mine)
            self.tables.append((long, _Table(hs[sel], rs[sel])))

    @classmethod
    def for_suites(cls, config: DecontamConfig) -> EvalIndex:
        cfg = config.validate()
        prompts = eval_prompts(cfg.suites, cfg.tasks_n, cfg.seed, cfg.ifeval_n, cfg.eval_files)
        return cls(prompts, cfg.ngram, cfg.max_df)

    def score_chunk(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per text: best score over suites, best eval prompt (-1 if none), matched grams, grams counted."""
        tokens, offsets = flatten([self.hasher(word_tokens(t)) for t in texts])
        n_rows, lengths = len(texts), np.diff(offsets)
        best, item = np.zeros(n_rows), np.full(n_rows, -1, dtype=np.int64)
        matched, grams = np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int64)
        h, rows = ngram_hashes(tokens, offsets, self.ngram, short="none")
        order = np.lexsort((h, rows))
        h, rows = h[order], rows[order]
        distinct = np.r_[True, (h[1:] != h[:-1]) | (rows[1:] != rows[:-1])] if len(h) else np.empty(0, bool)
        h, rows = h[distinct], rows[distinct]  # each row's distinct n-grams
        short = np.flatnonzero((lengths > 0) & (lengths < self.ngram))
        whole = whole_hashes(tokens, offsets, short) if len(short) else np.empty(0, np.uint64)
        for long, shorter in self.tables:
            self._score_long(long, h, rows, n_rows, best, item, matched, grams)
            if len(short):  # contained whole in an eval prompt: score = share of that prompt it covers
                r, ids, _ = shorter.lookup(whole, short)
                self._take_best(best, item, matched, grams, r, ids, lengths[r] / self.lengths[ids],
                                np.ones(len(r), np.int64), np.ones(len(r), np.int64))
        return best, item, matched, grams

    def _score_long(self, table: _Table, h, rows, n_rows, best, item, matched, grams) -> None:
        """Fraction of each row's distinct non-boilerplate n-grams found in one eval prompt of the suite.

        A row whose n-grams are *all* boilerplate for this suite is scored on all of them instead,
        so an eval prompt whose every n-gram also occurs in another prompt is still caught.
        """
        r, ids, boiler = table.lookup(h, rows, self.max_df)
        counted = np.bincount(rows, minlength=n_rows) - np.bincount(rows[boiler], minlength=n_rows)
        only_boiler = np.flatnonzero((counted == 0) & (np.bincount(rows[boiler], minlength=n_rows) > 0))
        if len(only_boiler):
            sel = np.isin(rows, only_boiler)
            r2, ids2, _ = table.lookup(h[sel], rows[sel], None)
            r, ids = np.r_[r, r2], np.r_[ids, ids2]
            counted[only_boiler] = np.bincount(rows[sel], minlength=n_rows)[only_boiler]
        if len(r):
            n_items = len(self.prompts)
            pair, count = np.unique(r * n_items + ids, return_counts=True)
            pr, pi = pair // n_items, pair % n_items
            self._take_best(best, item, matched, grams, pr, pi, count / np.maximum(counted[pr], 1), count,
                            counted[pr])
        unscored = grams == 0
        grams[unscored] = counted[unscored]

    @staticmethod
    def _take_best(best, item, matched, grams, rows, ids, scores, counts, totals) -> None:
        """Per row keep the highest score (ties: the first eval prompt) across calls."""
        if not len(rows):
            return
        order = np.lexsort((ids, -scores, rows))
        rows, ids, scores, counts, totals = rows[order], ids[order], scores[order], counts[order], totals[order]
        first = np.r_[True, rows[1:] != rows[:-1]]
        rows, ids, scores, counts, totals = rows[first], ids[first], scores[first], counts[first], totals[first]
        b = scores > best[rows]
        rows = rows[b]
        best[rows], item[rows], matched[rows], grams[rows] = scores[b], ids[b], counts[b], totals[b]


@dataclass
class Hit:
    """A training row dropped for overlapping an eval prompt."""

    row: int
    where: str
    suite: str
    eval_id: str
    eval_prompt: str
    score: float
    matched: int  # n-grams of the row found in the eval prompt (1 for a short-text match)
    ngrams: int  # distinct n-grams of the row (1 for a short text)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if len(self.eval_prompt) > SHOWN_CHARS:
            d["eval_prompt"] = self.eval_prompt[:SHOWN_CHARS] + "…"
        return d

    def reason(self) -> str:
        return (f"eval_overlap: {self.score:.3f} of its {self.ngrams} n-grams in {self.suite} item "
                f"{self.eval_id}")


@dataclass
class DecontamResult:
    """Rows kept and the hits; `keep[i]` is False exactly for the rows in `hits`."""

    total: int
    keep: np.ndarray
    hits: list[Hit]
    config: DecontamConfig
    eval_counts: dict[str, int]
    stats: dict[str, Any] = field(default_factory=dict)

    def removed_reasons(self) -> dict[int, str]:
        return {h.row: h.reason() for h in self.hits}

    def summary(self) -> dict[str, Any]:
        by_suite: dict[str, int] = {}
        for h in self.hits:
            by_suite[h.suite] = by_suite.get(h.suite, 0) + 1
        return {"total": self.total, "kept": int(self.keep.sum()), "removed": len(self.hits),
                "removed_by_suite": by_suite, "eval_prompts": self.eval_counts, "config": asdict(self.config),
                "stats": self.stats}


def decontaminate(examples: Iterable[Example], config: DecontamConfig | None = None, *,
                  index: EvalIndex | None = None, total: int | None = None, progress: bool = False) -> DecontamResult:
    """Score every row's user turns against the eval prompts and drop those at or above the threshold.

    index: a prebuilt EvalIndex (else built from config.suites). Reads `examples` once.
    """
    cfg = (config or DecontamConfig()).validate()
    t0 = time.perf_counter()
    index = index or EvalIndex.for_suites(cfg)
    if index.ngram != cfg.ngram:
        raise UsageError(f"the eval index uses {index.ngram}-grams but ngram={cfg.ngram} was asked for")
    t1 = time.perf_counter()
    keep_parts, hits, n = [], [], 0
    with progress_bar("decontaminate", total, "rows", show=progress) as advance:
        for chunk in chunks(examples, cfg.chunk_size):
            best, item, matched, grams = index.score_chunk([user_text(ex) for ex in chunk])
            flagged = best >= cfg.threshold
            keep_parts.append(~flagged)
            for i in np.flatnonzero(flagged).tolist():
                p = index.prompts[item[i]]
                ex = chunk[i]
                hits.append(Hit(n + i, f"{ex.source}:{ex.line}", p.suite, p.id, p.prompt, round(float(best[i]), 4),
                                int(matched[i]), int(grams[i])))
            n += len(chunk)
            advance(len(chunk))
    keep = np.concatenate(keep_parts) if keep_parts else np.empty(0, bool)
    counts: dict[str, int] = {}
    for p in index.prompts:
        counts[p.suite] = counts.get(p.suite, 0) + 1
    stats = {"seconds_index": round(t1 - t0, 3), "seconds_scan": round(time.perf_counter() - t1, 3)}
    return DecontamResult(n, keep, hits, cfg, counts, stats)
