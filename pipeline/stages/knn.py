"""Stage `knn`: per-image K-nearest-neighbour graphs over the stored regions. Resumable, by rank."""
from pipeline import extract
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.knn(params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, "knn", expected(params)["knn"], compute, rank)


if __name__ == "__main__":
    main()
