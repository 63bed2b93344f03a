"""Stage `knn`: per-image K-nearest-neighbour graphs over the stored regions. Resumable, by rank."""
from pathlib import Path

import numpy as np

from features.knn import knn_graphs
from features.store import open_shard, shard_path
from pipeline.provenance import expected
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    records = expected(params)
    store = Path(params.store.dir)

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        regions = open_shard(shard_path(store, "regions", shard), "regions", records["regions"],
                             [e["id"] for e in entries])
        try:
            arrays = {name: regions.read(name) for name in ("features", "boxes", "counts", "image_sizes")}
            row_of = {e["id"]: row for row, e in enumerate(entries)}
            errors = {row_of[r["id"]]: f"rejected by the regions stage: {r['reason']}" for r in regions.rejects}
        finally:
            regions.close()
        neighbors, weights = knn_graphs(arrays["features"], arrays["boxes"], arrays["counts"],
                                        arrays["image_sizes"], params.knn)
        progress(len(entries))
        return {"neighbors": neighbors, "weights": weights.astype(np.float16)}, errors

    for_each_shard(params, manifest, "knn", records["knn"], compute, rank)


if __name__ == "__main__":
    main()
