"""Diversity by k-means ("Diversify and Conquer"): cluster embeddings, then sample every cluster
in proportion to its size, so rare kinds of examples keep their share and near-identical
examples cannot fill the budget.

Lloyd's algorithm with k-means++ seeding in torch, over chunks so a million embeddings fit.
"""

from __future__ import annotations

import numpy as np
import torch

from .simple import proportional_allocation


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """x [n, d], c [k, d] -> squared distances [n, k]."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and its squared distance for every row, chunked."""
    labels = torch.empty(len(x), dtype=torch.long)
    dists = torch.empty(len(x), dtype=x.dtype)
    for s in range(0, len(x), chunk):
        d = _sq_dist(x[s:s + chunk], centroids)
        dists[s:s + chunk], labels[s:s + chunk] = d.min(1)
    return labels, dists


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 20, seed_sample: int = 20000
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids [k, d], labels [n], squared distance to own centroid [n]).

    k-means++ seeding runs on a random sample of at most `seed_sample` rows (enough to place
    centroids well, and it keeps seeding linear in k at a million rows).
    """
    gen = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = len(X)
    k = max(1, min(k, n))
    sample = X[torch.randperm(n, generator=gen)[:seed_sample]]
    centroids = sample[torch.randint(len(sample), (1,), generator=gen)]
    closest = _sq_dist(sample, centroids).squeeze(1)
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1 / len(closest))
        nxt = sample[torch.multinomial(probs, 1, generator=gen)]
        centroids = torch.cat([centroids, nxt])
        closest = torch.minimum(closest, _sq_dist(sample, nxt).squeeze(1))
    labels, dists = assign(X, centroids)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        empty = counts == 0
        new = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp_min(1).unsqueeze(1))
        labels_new, dists = assign(X, new)
        moved = (labels_new != labels).sum().item()
        centroids, labels = new, labels_new
        if moved == 0:
            break
    return centroids.numpy(), labels.numpy(), dists.numpy()


def cluster_proportional_select(labels: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Each cluster gets budget * size/n examples (largest remainder), drawn at random within it."""
    rng = np.random.default_rng(seed)
    clusters = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    alloc = proportional_allocation({str(c): len(ix) for c, ix in clusters.items()}, budget)
    picked = [rng.choice(ix, size=alloc[str(c)], replace=False) for c, ix in clusters.items() if alloc[str(c)]]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
