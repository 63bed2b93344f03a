"""Stage `knn`: per-image K-nearest-neighbour graphs over the stored regions. Resumable, by rank."""
import numpy as np

from features.knn import knn_graphs
from pipeline.provenance import expected
from pipeline.stages.common import Rank, for_each_shard, load_manifest, read_upstream, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    records = expected(params)

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        regions, errors = read_upstream(params, "regions", shard, records["regions"], entries,
                                        ("features", "boxes", "counts", "image_sizes"))
        neighbors, weights = knn_graphs(regions["features"], regions["boxes"], regions["counts"],
                                        regions["image_sizes"], params.knn)
        progress(len(entries))
        return {"neighbors": neighbors, "weights": weights.astype(np.float16)}, errors

    for_each_shard(params, manifest, "knn", records["knn"], compute, rank)


if __name__ == "__main__":
    main()
