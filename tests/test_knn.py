import numpy as np
import pytest

from features.config import KnnConfig
from features.knn import knn_graphs


def _random_regions(n=20, n_max=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, n_max, dim)).astype(np.float32)
    xy = rng.uniform(0, 100, size=(n, n_max, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, size=(n, n_max, 2))], axis=-1).astype(np.float32)
    counts = rng.integers(1, n_max + 1, size=n).astype(np.int32)
    counts[0], counts[1] = 1, 3  # fewer regions than K + 1
    for i, c in enumerate(counts):
        features[i, c:] = 0
        boxes[i, c:] = 0
    sizes = np.full((n, 2), 128, np.int32)
    return features, boxes, counts, sizes


@pytest.mark.parametrize("metric", ["cosine", "center"])
def test_faiss_and_torch_give_identical_neighbour_sets(metric):
    features, boxes, counts, sizes = _random_regions()
    a, wa = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=5, metric=metric, backend="torch"))
    b, wb = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=5, metric=metric, backend="faiss"))
    for i in range(len(counts)):
        for row in range(counts[i]):
            assert set(a[i, row]) == set(b[i, row])
    np.testing.assert_allclose(np.sort(wa, axis=-1), np.sort(wb, axis=-1), atol=1e-4)


def test_graph_structure_and_weights():
    features, boxes, counts, sizes = _random_regions()
    neighbors, weights = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=5, sigma=0.5))
    for i, c in enumerate(counts):
        assert (neighbors[i, c:] == -1).all()  # padding rows have no edges
        for row in range(c):
            real = neighbors[i, row][neighbors[i, row] >= 0]
            assert len(real) == min(5, c - 1) and row not in real and (real < c).all()
            f = features[i] / np.linalg.norm(features[i], axis=-1, keepdims=True).clip(1e-12)
            d = 1 - f[row] @ f[real].T
            np.testing.assert_allclose(weights[i, row, :len(real)], np.exp(-d**2 / (2 * 0.5**2)), rtol=1e-5)
            assert (np.diff(d) >= -1e-6).all()  # nearest first
    assert (neighbors[0] == -1).all()  # a single region has no neighbour


def test_unknown_metric_and_backend_are_named():
    features, boxes, counts, sizes = _random_regions(n=2)
    with pytest.raises(ValueError, match="knn.metric"):
        knn_graphs(features, boxes, counts, sizes, KnnConfig(metric="l3"))
    with pytest.raises(ValueError, match="knn.backend"):
        knn_graphs(features, boxes, counts, sizes, KnnConfig(backend="annoy"))


def test_both_metrics_side_by_side():
    features, boxes, counts, sizes = _random_regions()
    both, weights = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=3, metric="both"))
    by_features, wf = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=3, metric="cosine"))
    by_centres, wc = knn_graphs(features, boxes, counts, sizes, KnnConfig(k=3, metric="center"))
    assert both.shape == (len(counts), 12, 6)
    np.testing.assert_array_equal(both, np.concatenate([by_features, by_centres], axis=-1))
    np.testing.assert_array_equal(weights, np.concatenate([wf, wc], axis=-1))
    assert not np.array_equal(by_features, by_centres)  # the two graphs really differ
