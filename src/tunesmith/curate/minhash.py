"""Vectorised MinHash signatures, LSH banding, candidate pairs and exact Jaccard verification.

Signatures use datasketch's "affine32" scheme (its default since 2.0): each 32-bit shingle id is
pre-mixed with the MurmurHash3 32-bit finalizer and permuted as `a_k * h + b_k (mod 2**32)`, with
(a, b) drawn exactly as `datasketch.MinHash(num_perm, seed)` draws them. So a signature equals
`MinHash(num_perm, seed, hashfunc=lambda x: x)` updated with the same ids (tested), but a whole
chunk of rows is signed with a few numpy operations instead of one Python object per row.
Band/row counts come from `datasketch.MinHashLSH`'s own optimiser for the threshold, weighted
9:1 against false negatives (`weights=(0.1, 0.9)`): every candidate pair is verified with the
exact Jaccard afterwards, so an extra candidate only costs time while a missed one is a missed
duplicate. For threshold 0.7 and 128 permutations that gives 20 bands x 6 rows: a pair at Jaccard
0.7 becomes a candidate with probability 0.92, at 0.8 0.998, at 0.5 0.27.

Signatures are not kept: each row keeps only its `bands` 64-bit band keys (a fold of the band's
`rows` values), which is all the bucketing needs, and its sorted shingle ids for verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hashing import fmix64

_FM1, _FM2 = np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35)
_S16, _S13 = np.uint32(16), np.uint32(13)
_MAX_CELLS = 4_000_000  # shingles x permutations per numpy block (16 MB of uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, element-wise on uint32."""
    h = h ^ (h >> _S16)
    h = h * _FM1
    h = h ^ (h >> _S13)
    h = h * _FM2
    return h ^ (h >> _S16)


LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights of datasketch's optimiser


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that datasketch.MinHashLSH picks for this Jaccard threshold and num_perm (LSH_WEIGHTS)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return int(lsh.b), int(lsh.r)


@dataclass
class MinHasher:
    """Permutations of datasketch's affine32 scheme for (num_perm, seed); signs chunks of rows."""

    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        gen = np.random.RandomState(self.seed)  # the draws datasketch 2.x makes in _init_permutations
        a = gen.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)
        self.a, self.b = a, b

    def signatures(self, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(R, num_perm) uint32 signatures; row r's shingle ids are ids[offsets[r]:offsets[r+1]] (non-empty)."""
        n_rows = len(offsets) - 1
        sig = np.empty((n_rows, self.num_perm), dtype=np.uint32)
        hv = fmix32(ids.astype(np.uint32, copy=False))
        step_rows = max(1, _MAX_CELLS // self.num_perm)  # shingles per block, cut at row boundaries
        r0 = 0
        while r0 < n_rows:
            r1 = int(np.searchsorted(offsets, offsets[r0] + step_rows, side="right")) - 1
            r1 = min(max(r1, r0 + 1), n_rows)
            lo, hi = offsets[r0], offsets[r1]
            phv = hv[lo:hi, None] * self.a + self.b  # (S_block, P), wraps modulo 2**32
            sig[r0:r1] = np.minimum.reduceat(phv, offsets[r0:r1] - lo, axis=0)
            r0 = r1
        return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(R, bands) uint64: band j's key folds sig[:, j*rows:(j+1)*rows] into one 64-bit hash."""
    n = sig.shape[0]
    blocks = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    key = np.zeros((n, bands), dtype=np.uint64)
    for j in range(rows):
        key = key * np.uint64(0x100000001B3) + blocks[:, :, j]
    return fmix64(key)


def candidate_pairs(keys: np.ndarray, index: np.ndarray, max_bucket: int = 32) -> np.ndarray:
    """Unique (i, j), i < j, of rows sharing a bucket in any band.

    keys: (R, bands) band keys; index: (R,) ascending global row numbers of those rows.
    A bucket of up to `max_bucket` rows gives all its pairs; a larger one (rare unless many
    rows are nearly the same) gives each row paired with the bucket's first row and with the
    row before it, so the work stays linear while clusters still connect.
    """
    out = []
    for band in range(keys.shape[1]):
        k = keys[:, band]
        order = np.argsort(k, kind="stable")  # stable: rows of one bucket stay in index order
        ks = k[order]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        sizes = np.diff(np.r_[starts, len(ks)])
        for size in np.unique(sizes[sizes > 1]):
            first = starts[sizes == size]
            if size <= max_bucket:
                members = index[order[first[:, None] + np.arange(size)]]  # (G, size)
                ii, jj = np.triu_indices(size, 1)
                out.append(np.stack([members[:, ii].ravel(), members[:, jj].ravel()], axis=1))
            else:
                for s in first:
                    m = index[order[s:s + size]]
                    out.append(np.stack([np.full(size - 1, m[0]), m[1:]], axis=1))
                    out.append(np.stack([m[:-1], m[1:]], axis=1))
    if not out:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(out).astype(np.int64)
    return np.unique(pairs, axis=0)


def gather(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenation of flat[offsets[r]:offsets[r+1]] for r in rows, and each element's position in rows."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    begin = np.cumsum(lengths) - lengths
    idx = np.arange(int(lengths.sum()), dtype=np.int64) - begin[owner] + starts[owner]
    return flat[idx], owner


def jaccard_pairs(flat: np.ndarray, offsets: np.ndarray, pairs: np.ndarray, batch: int = 200_000) -> np.ndarray:
    """Exact Jaccard of the shingle-id sets of each pair (sets stored sorted and unique per row)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), batch):
        p = pairs[lo:lo + batch]
        a, oa = gather(flat, offsets, p[:, 0])
        b, ob = gather(flat, offsets, p[:, 1])
        tagged = np.concatenate([(oa.astype(np.uint64) << np.uint64(32)) | a.astype(np.uint64),
                                 (ob.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)])
        tagged.sort()
        dup = tagged[1:][tagged[1:] == tagged[:-1]] >> np.uint64(32)  # one entry per shared id
        inter = np.bincount(dup.astype(np.int64), minlength=len(p))
        la = offsets[p[:, 0] + 1] - offsets[p[:, 0]]
        lb = offsets[p[:, 1] + 1] - offsets[p[:, 1]]
        out[lo:lo + batch] = inter / np.maximum(la + lb - inter, 1)
    return out


def components(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over the rows named in `edges` (E, 2): (nodes, root of each node).

    nodes are the distinct rows in ascending order; a root is the smallest row of its component,
    so the first occurrence of a cluster is the one kept.
    """
    nodes = np.unique(edges)
    local = np.searchsorted(nodes, edges)
    parent = list(range(len(nodes)))

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for i, j in local.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.fromiter((find(x) for x in range(len(nodes))), dtype=np.int64, count=len(nodes))
    return nodes, nodes[roots]
