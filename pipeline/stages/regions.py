"""Stage `regions`: Faster R-CNN boxes, scores, labels and RoI features, one shard per slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
from pipeline import extract
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.regions(params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, "regions", expected(params)["regions"], compute, rank)


if __name__ == "__main__":
    main()
