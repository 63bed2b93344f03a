"""Stage `knn`: per-image K-nearest-neighbour graphs over the stored regions."""
from pathlib import Path

import numpy as np

from features.knn import knn_graphs
from features.store import shard_path, open_shard
from pipeline.provenance import expected
from pipeline.stages.common import for_each_shard, load_manifest, start


def main() -> None:
    params = start()
    manifest = load_manifest()
    records = expected(params)
    store = Path(params.store.dir)

    def compute(shard: int, entries: list[dict]) -> dict[str, np.ndarray]:
        regions = open_shard(shard_path(store, "regions", shard), "regions", records["regions"],
                             [e["id"] for e in entries])
        try:
            arrays = {name: regions.read(name) for name in ("features", "boxes", "counts", "image_sizes")}
        finally:
            regions.close()
        neighbors, weights = knn_graphs(arrays["features"], arrays["boxes"], arrays["counts"],
                                        arrays["image_sizes"], params.knn)
        return {"neighbors": neighbors, "weights": weights.astype(np.float16)}

    for_each_shard(params, manifest, "knn", records["knn"], compute)


if __name__ == "__main__":
    main()
