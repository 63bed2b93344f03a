"""Stage `region_keywords`: each region's local keywords, from the detector's labels or by FAISS
retrieval over the CLIP-encoded object bank with the region crop's CLIP embedding."""
from pipeline import extract
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.region_keywords(params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, "region_keywords", expected(params)["region_keywords"], compute, rank)


if __name__ == "__main__":
    main()
