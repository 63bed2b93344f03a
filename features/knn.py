"""Per-image K-nearest-neighbour graphs over regions (docs/method.md §2, eqs. 3-5).

Distances: ``cosine`` — d(i, j) = 1 - cos(f_i, f_j) on L2-normalised region features (the
paper's equations); ``center`` — Euclidean distance of box centres divided by the image
diagonal (the paper's "spatial proximity" reading); ``both`` — the K nearest by features and
the K nearest by centres side by side (2K slots; a pair found by both becomes one edge, with
its feature weight). Edge weight e_ij = exp(-d² / (2σ²)).
Each node keeps its K nearest other nodes among the image's real regions; padding rows are
never neighbours. Stored graphs are directed K-NN lists; symmetrising (i ~ j if either picks
the other) happens when they are turned into edges for the GAT.

Two backends compute the same neighbour sets: ``torch`` (one batched matmul + top-k over all
images at once; the default, measured fastest on CPU) and ``faiss`` (an exact search per image,
on a GPU when the installed FAISS has one).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from features.config import KnnConfig, choices

VERSION = 1  # bump when a change here changes the graphs produced (recorded in provenance)
METRICS = choices(KnnConfig, "metric")
BACKENDS = choices(KnnConfig, "backend")


def _points(features: np.ndarray, boxes: np.ndarray, sizes: np.ndarray, metric: str) -> np.ndarray:
    """The vectors whose distances define the graph: unit features, or normalised box centres."""
    if metric == "cosine":
        f = features.astype(np.float32)
        return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
    if metric == "center":
        centers = (boxes[..., :2] + boxes[..., 2:]) / 2
        diagonal = np.linalg.norm(sizes.astype(np.float32), axis=-1)[:, None, None]
        return (centers / np.maximum(diagonal, 1e-6)).astype(np.float32)
    raise ValueError(f"knn.metric: unknown metric {metric!r}; known: {METRICS}")


def _distances_torch(points: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1 - points @ points.transpose(1, 2)  # (B, N, N)
    return torch.cdist(points, points)


def _knn_torch(points: np.ndarray, counts: np.ndarray, cfg: KnnConfig) -> tuple[np.ndarray, np.ndarray]:
    n, n_max = points.shape[:2]
    k = min(cfg.k, n_max - 1)
    neighbors = np.full((n, n_max, cfg.k), -1, np.int32)
    distances = np.full((n, n_max, cfg.k), np.inf, np.float32)
    for start in range(0, n, cfg.batch_images):
        p = torch.from_numpy(points[start:start + cfg.batch_images])
        c = torch.from_numpy(counts[start:start + cfg.batch_images]).long()
        d = _distances_torch(p, cfg.metric)  # (B, N, N)
        index = torch.arange(n_max)
        invalid = (index[None, None, :] >= c[:, None, None]) | (index[:, None] == index[None, :])[None]
        d = d.masked_fill(invalid, float("inf"))
        # stable sort: ties resolve to the lower index, as in FAISS's exact search
        order = torch.sort(d, dim=-1, stable=True)
        top_d, top_i = order.values[..., :k], order.indices[..., :k]
        top_i = top_i.masked_fill(torch.isinf(top_d), -1)
        top_i = top_i.masked_fill(index[None, :, None] >= c[:, None, None], -1)  # padding rows: no edges
        neighbors[start:start + len(p), :, :k] = top_i.numpy()
        distances[start:start + len(p), :, :k] = top_d.numpy()
    return neighbors, distances


def faiss_knn():
    """FAISS's exact brute-force search, on the GPU when the installed FAISS has GPU support."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        return lambda queries, base, k, metric: faiss.knn_gpu(resources, queries, base, k, metric=metric)
    return lambda queries, base, k, metric: faiss.knn(queries, base, k, metric=metric)


def _knn_faiss(points: np.ndarray, counts: np.ndarray, cfg: KnnConfig) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    search = faiss_knn()
    n, n_max = points.shape[:2]
    neighbors = np.full((n, n_max, cfg.k), -1, np.int32)
    distances = np.full((n, n_max, cfg.k), np.inf, np.float32)
    metric = faiss.METRIC_INNER_PRODUCT if cfg.metric == "cosine" else faiss.METRIC_L2
    for i in range(n):
        m = int(counts[i])
        if m < 2:
            continue
        x = np.ascontiguousarray(points[i, :m])
        k = min(cfg.k + 1, m)
        scores, ids = search(x, x, k, metric)
        for row in range(m):
            keep = [(s, j) for s, j in zip(scores[row], ids[row]) if j != row and j >= 0][: cfg.k]
            for slot, (s, j) in enumerate(keep):
                neighbors[i, row, slot] = j
                distances[i, row, slot] = 1 - s if cfg.metric == "cosine" else np.sqrt(max(s, 0.0))
    return neighbors, distances


def knn_graphs(features: np.ndarray, boxes: np.ndarray, counts: np.ndarray, sizes: np.ndarray,
               cfg: KnnConfig) -> tuple[np.ndarray, np.ndarray]:
    """Directed K-NN lists for a batch of images.

    features (n, N, D), boxes (n, N, 4), counts (n,), sizes (n, 2) as (height, width) →
    neighbors (n, N, K) int32 with -1 where a node has fewer than K neighbours (2K for ``both``),
    weights (n, N, K) float32 Gaussian edge weights (0 where there is no neighbour).
    """
    if cfg.backend not in BACKENDS:
        raise ValueError(f"knn.backend: unknown backend {cfg.backend!r}; known: {BACKENDS}")
    if cfg.metric == "both":
        by_features = knn_graphs(features, boxes, counts, sizes, replace(cfg, metric="cosine"))
        by_centres = knn_graphs(features, boxes, counts, sizes, replace(cfg, metric="center"))
        return tuple(np.concatenate(pair, axis=-1) for pair in zip(by_features, by_centres))  # (n, N, 2K)
    points = _points(features, boxes, sizes, cfg.metric)
    search = _knn_torch if cfg.backend == "torch" else _knn_faiss
    neighbors, distances = search(points, counts, cfg)
    weights = np.where(neighbors >= 0, np.exp(-np.square(distances) / (2 * cfg.sigma**2)), 0.0)
    return neighbors, weights.astype(np.float32)
