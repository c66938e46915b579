"""Exact and near-duplicate removal over a stream of Examples, in one pass and bounded memory.

Rows are read in chunks of `chunk_size`; per row only compact numbers are kept: the 64-bit hash
of its normalised text (`text.exact_key`), its MinHash band keys and its sorted shingle ids
(about 150 bytes for a short row with the defaults), never the Example itself.

1. Exact: rows with the same blake2b-64 hash of the normalised text form a cluster; the first
   occurrence is kept. (A 64-bit collision among 10^6 rows has probability ~3e-8.)
2. Near (MinHash LSH, on the rows the exact pass keeps): shingles are word n-grams (default 3)
   over `text.dedup_tokens` (role markers + content words; stop words left out, see `text`) or
   character n-grams of the same text. Rows that share a band bucket are candidates; every
   candidate pair is then verified with the exact Jaccard similarity of the two shingle sets
   (not the MinHash estimate), so LSH false positives never remove a row; only LSH misses (pairs
   above the threshold that share no bucket: with the default 20 bands x 6 rows that is 8% at
   Jaccard 0.7, 0.2% at 0.8 and none in practice at 0.9, see `minhash`) can hide a duplicate. Verified pairs are joined with
   union-find; each cluster keeps its first row. Each removed row reports its Jaccard with the kept
   row (it can be below the threshold when it joined the cluster through another member).
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tunesmith.data.example import Example
from tunesmith.errors import UsageError

from . import minhash as mh
from .hashing import TokenHasher, chars_to_tokens, flatten, ngram_hashes, to32
from tunesmith.ui import progress_bar
from .text import STOP_WORDS, dedup_string, dedup_tokens, exact_key

SHINGLES = ("word", "char")


@dataclass
class DedupConfig:
    """Options of `dedup`; the CLI flags of `tunesmith data dedup` have the same names.

    near:       also remove near-duplicates (MinHash LSH); False = exact pass only
    shingle:    "word" (word n-grams of content tokens) or "char" (character n-grams of them)
    ngram:      n-gram size of a shingle (3 words; use about 5 for "char")
    num_perm:   MinHash permutations
    threshold:  Jaccard similarity (of shingle sets) at or above which two rows are near-duplicates
    bands/rows: LSH banding; None = datasketch.MinHashLSH's optimum for threshold and num_perm
    stop_words: leave function/politeness words and instruction verbs out of shingles (text.STOP_WORDS)
    seed:       MinHash permutation seed (datasketch's default is 1)
    chunk_size: rows hashed per numpy batch
    max_bucket: LSH buckets up to this size give all their pairs, larger ones a linear subset
    """

    near: bool = True
    shingle: str = "word"
    ngram: int = 3
    num_perm: int = 128
    threshold: float = 0.7
    bands: int | None = None
    rows: int | None = None
    stop_words: bool = True
    seed: int = 1
    chunk_size: int = 20_000
    max_bucket: int = 32

    def validate(self) -> DedupConfig:
        if self.shingle not in SHINGLES:
            raise UsageError(f"shingle must be one of {', '.join(SHINGLES)}, got {self.shingle!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise UsageError(f"threshold must be a Jaccard similarity in (0, 1], got {self.threshold}")
        if self.ngram < 1:
            raise UsageError(f"ngram must be >= 1, got {self.ngram}")
        if self.num_perm < 2:
            raise UsageError(f"num_perm must be >= 2, got {self.num_perm}")
        if self.chunk_size < 1 or self.max_bucket < 2:
            raise UsageError("chunk_size must be >= 1 and max_bucket >= 2")
        if (self.bands is None) != (self.rows is None):
            raise UsageError("give both bands and rows, or neither (then they follow from threshold and num_perm)")
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise UsageError(f"bands x rows must be between 1 and num_perm={self.num_perm}, got {self.bands} x {self.rows}")
        return self


@dataclass
class Cluster:
    """Rows found to be copies of one another: the kept row, the removed ones, and how similar."""

    kind: str  # "exact" or "near"
    kept: int  # 0-based row number in the input
    kept_where: str  # source:line
    removed: list[int] = field(default_factory=list)
    removed_where: list[str] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)  # Jaccard with the kept row (1.0 for exact)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DedupResult:
    """What `dedup` found. `keep[i]` is False for every row in `removed_reasons()`."""

    total: int
    keep: np.ndarray  # (total,) bool
    exact_clusters: list[Cluster]
    near_clusters: list[Cluster]
    config: DedupConfig
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_exact_removed(self) -> int:
        return sum(len(c.removed) for c in self.exact_clusters)

    @property
    def n_near_removed(self) -> int:
        return sum(len(c.removed) for c in self.near_clusters)

    def removed_reasons(self) -> dict[int, str]:
        """row -> "exact_dup: ..." / "near_dup: ..." (reason kinds as in data.load)."""
        out = {}
        for c in self.exact_clusters:
            for i in c.removed:
                out[i] = f"exact_dup: same normalised text as {c.kept_where} (row {c.kept})"
        for c in self.near_clusters:
            for i, s in zip(c.removed, c.similarity):
                out[i] = f"near_dup: jaccard {s:.3f} with {c.kept_where} (row {c.kept})"
        return out

    def summary(self) -> dict[str, Any]:
        return {"total": self.total, "kept": int(self.keep.sum()), "exact_removed": self.n_exact_removed,
                "near_removed": self.n_near_removed, "exact_clusters": len(self.exact_clusters),
                "near_clusters": len(self.near_clusters), "config": asdict(self.config), "stats": self.stats}


def dedup(examples: Iterable[Example], config: DedupConfig | None = None, *, total: int | None = None,
          progress: bool = False) -> DedupResult:
    """Find exact and near-duplicate rows of `examples` (any iterable, read once).

    total: the number of rows, if known, for the progress bar. Returns the clusters and a keep
    mask; nothing is written (see `report.write_curated`).
    """
    cfg = (config or DedupConfig()).validate()
    state = _State(cfg)
    t0 = time.perf_counter()
    with progress_bar("dedup: hashing", total, "rows", show=progress) as advance:
        for chunk in chunks(examples, cfg.chunk_size):
            state.add(chunk)
            advance(len(chunk))
    result = state.finish()
    result.stats["seconds_hashing"] = round(state.t_finish - t0, 3)
    return result


def chunks(items: Iterable[Example], size: int) -> Iterator[list[Example]]:
    """Consecutive lists of up to `size` items."""
    buf: list[Example] = []
    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


class _State:
    """The compact per-row numbers collected while streaming, and the final clustering."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.sources: dict[str, int] = {}
        self.src_ids, self.lines = array("i"), array("q")
        self.hashes: list[np.ndarray] = []
        self.stop = STOP_WORDS if cfg.stop_words else None
        self.hasher = TokenHasher()
        if cfg.near:
            self.bands, self.rows = (cfg.bands, cfg.rows) if cfg.bands else mh.lsh_params(cfg.threshold, cfg.num_perm)
            self.minhasher = mh.MinHasher(cfg.num_perm, cfg.seed)
            self.keys: list[np.ndarray] = []
            self.shingles: list[np.ndarray] = []
            self.counts: list[np.ndarray] = []
        self.t_finish = 0.0

    def add(self, chunk: list[Example]) -> None:
        for ex in chunk:
            self.src_ids.append(self.sources.setdefault(ex.source, len(self.sources)))
            self.lines.append(int(ex.line))
        self.hashes.append(np.fromiter(
            (int.from_bytes(hashlib.blake2b(exact_key(ex).encode("utf-8"), digest_size=8).digest(), "little")
             for ex in chunk), dtype=np.uint64, count=len(chunk)))
        if self.cfg.near:
            ids, offsets = self.shingle_sets(chunk)
            sig = self.minhasher.signatures(ids, offsets)  # (R, num_perm)
            self.keys.append(mh.band_keys(sig, self.bands, self.rows))
            self.shingles.append(ids)
            self.counts.append(np.diff(offsets))

    def shingle_sets(self, chunk: list[Example]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique 32-bit shingle ids per row (flat) and row offsets; every row has at least one."""
        if self.cfg.shingle == "word":
            tokens, offsets = flatten([self.hasher(dedup_tokens(ex, self.stop)) for ex in chunk])
        else:
            tokens, offsets = chars_to_tokens([dedup_string(ex, self.stop) for ex in chunk])
        h, rows = ngram_hashes(tokens, offsets, self.cfg.ngram, short="whole")
        empty = np.flatnonzero(np.diff(offsets) == 0)  # rows with no text share one shingle
        if len(empty):
            h, rows = np.concatenate([h, np.zeros(len(empty), np.uint64)]), np.concatenate([rows, empty])
        key = np.unique((rows.astype(np.uint64) << np.uint64(32)) | to32(h).astype(np.uint64))
        counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(chunk))
        offsets = np.zeros(len(chunk) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), offsets

    def where(self, i: int) -> str:
        return f"{self.source_names[self.src_ids[i]]}:{self.lines[i]}"

    def finish(self) -> DedupResult:
        self.t_finish = time.perf_counter()
        self.source_names = list(self.sources)
        hashes = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint64)
        n = len(hashes)
        rep, exact = self.exact_clusters(hashes)
        t1 = time.perf_counter()
        keep = rep == np.arange(n)
        near: list[Cluster] = []
        stats: dict[str, Any] = {"seconds_exact": round(t1 - self.t_finish, 3)}
        if self.cfg.near and n:
            near, nstats = self.near_clusters(np.flatnonzero(keep))
            for c in near:
                keep[c.removed] = False
            stats.update(nstats, seconds_near=round(time.perf_counter() - t1, 3))
        return DedupResult(n, keep, exact, near, self.cfg, stats)

    def exact_clusters(self, hashes: np.ndarray) -> tuple[np.ndarray, list[Cluster]]:
        """rep[i] = first row with row i's hash; clusters of the groups with more than one row."""
        n = len(hashes)
        order = np.argsort(hashes, kind="stable")
        hs = hashes[order]
        starts = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1]]) if n else np.empty(0, np.int64)
        ends = np.r_[starts[1:], n]
        rep = np.arange(n)
        clusters = []
        for s, e in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            members = order[s:e]  # ascending: the sort is stable
            rep[members] = members[0]
            removed = members[1:].tolist()
            clusters.append(Cluster("exact", int(members[0]), self.where(int(members[0])), removed,
                                    [self.where(i) for i in removed], [1.0] * len(removed)))
        clusters.sort(key=lambda c: c.kept)
        return rep, clusters

    def near_clusters(self, reps: np.ndarray) -> tuple[list[Cluster], dict[str, Any]]:
        """Near-duplicate clusters among the rows `reps` that the exact pass kept."""
        bounds = np.r_[0, np.cumsum([len(k) for k in self.keys])]
        parts = np.split(reps, np.searchsorted(reps, bounds[1:-1]))
        keys = np.concatenate([k[p - b] for k, p, b in zip(self.keys, parts, bounds)])  # only the kept rows'
        self.keys = []  # band keys of exact duplicates are not needed any more
        counts = np.concatenate(self.counts)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        flat = np.concatenate(self.shingles)
        pairs = mh.candidate_pairs(keys, reps, self.cfg.max_bucket)
        sims = mh.jaccard_pairs(flat, offsets, pairs)
        edges = pairs[sims >= self.cfg.threshold]
        stats = {"lsh_bands": self.bands, "lsh_rows": self.rows, "candidate_pairs": int(len(pairs)),
                 "verified_pairs": int(len(edges)), "shingles": int(len(flat))}
        if not len(edges):
            return [], stats
        nodes, roots = mh.components(edges)
        members = nodes != roots
        to_kept = np.stack([roots[members], nodes[members]], axis=1)
        sim_to_kept = mh.jaccard_pairs(flat, offsets, to_kept)
        clusters: dict[int, Cluster] = {}
        for (root, node), s in zip(to_kept.tolist(), sim_to_kept.tolist()):
            c = clusters.get(root)
            if c is None:
                c = clusters[root] = Cluster("near", root, self.where(root))
            c.removed.append(node)
            c.removed_where.append(self.where(node))
            c.similarity.append(round(s, 4))
        return sorted(clusters.values(), key=lambda c: c.kept), stats
