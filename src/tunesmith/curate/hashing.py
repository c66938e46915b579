"""Stable, vectorised hashing of tokens and n-grams.

Python's built-in `hash` of a string changes from process to process, so tokens are hashed once
with blake2b (8 bytes) and cached; everything after that is numpy over whole chunks of rows, so
no Python code runs per shingle. An n-gram's hash folds its token hashes
(`h = h * P + t`, wrapping modulo 2**64) and finishes with the MurmurHash3 64-bit finalizer;
a k-gram hash is the same function for every k, so a whole short text can be looked up in an
index of k-grams of longer ones.

A chunk is a flat token-hash array plus row offsets: row r owns tokens[offsets[r]:offsets[r+1]].
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_P = np.uint64(0x100000001B3)  # FNV-64 prime: the fold multiplier
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S32 = np.uint64(32)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection that spreads every input bit), element-wise."""
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


def token_hash(token: str) -> int:
    """A 64-bit hash of a token that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


class TokenHasher:
    """token -> 64-bit hash, cached (the cache is emptied when it reaches `max_size` entries)."""

    def __init__(self, max_size: int = 2_000_000):
        self.max_size = max_size
        self._cache: dict[str, int] = {}

    def __call__(self, tokens: Sequence[str]) -> list[int]:
        cache = self._cache
        if len(cache) > self.max_size:
            cache.clear()
        out = []
        for t in tokens:
            h = cache.get(t)
            if h is None:
                h = cache[t] = token_hash(t)
            out.append(h)
        return out


def flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row token hashes -> (flat uint64 array, int64 offsets of length len(rows) + 1)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((h for r in rows for h in r), dtype=np.uint64, count=int(offsets[-1]))
    return flat, offsets


def chars_to_tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row code points (mixed to 64 bits) in the flat-array form, for character shingles."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return fmix64(cps + np.uint64(0x9E3779B97F4A7C15)), offsets


def ngram_hashes(tokens: np.ndarray, offsets: np.ndarray, n: int,
                 short: str = "whole") -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every n-gram that lies inside one row, and the row each belongs to.

    tokens: (M,) uint64 token hashes; offsets: (R+1,) row boundaries.
    short:  what a row with fewer than n tokens (but at least one) contributes: "whole" = one
            hash of all its tokens (the same as that k-gram's hash in a longer row), "none" = nothing.
    Returns (hashes (G,) uint64, rows (G,) int64), ordered by row then position.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    m = len(tokens)
    lengths = np.diff(offsets)
    row_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (M,)
    hashes = np.empty(0, dtype=np.uint64)
    rows = np.empty(0, dtype=np.int64)
    if m >= n:
        g = m - n + 1
        h = tokens[:g].copy()
        for j in range(1, n):
            h *= _P
            h += tokens[j:j + g]
        starts = np.arange(g, dtype=np.int64)
        valid = starts + n <= offsets[1:][row_of[:g]]  # the n-gram ends inside its row
        hashes, rows = fmix64(h[valid]), row_of[:g][valid]
    if short == "whole":
        short_rows = np.flatnonzero((lengths > 0) & (lengths < n))
        if len(short_rows):
            hs, rs = whole_hashes(tokens, offsets, short_rows), short_rows
            order = np.argsort(np.concatenate([rows, rs]), kind="stable")
            hashes, rows = np.concatenate([hashes, hs])[order], np.concatenate([rows, rs])[order]
    return hashes, rows


def whole_hashes(tokens: np.ndarray, offsets: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The hash of all tokens of each row in `which` (rows must be non-empty), as one k-gram."""
    start, length = offsets[which], offsets[which + 1] - offsets[which]
    h = tokens[start].copy()
    for j in range(1, int(length.max(initial=1))):
        live = length > j
        h[live] = h[live] * _P + tokens[start[live] + j]
    return fmix64(h)


def to32(h: np.ndarray) -> np.ndarray:
    """The high 32 bits of 64-bit hashes (MinHash works on 32-bit shingle ids)."""
    return (h >> _S32).astype(np.uint32)
