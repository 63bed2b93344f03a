"""Stage `region_clip`: CLIP image embeddings of every stored region's crop. Resumable, by rank."""
from pipeline import extract
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.region_clip(params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, "region_clip", expected(params)["region_clip"], compute, rank)


if __name__ == "__main__":
    main()
