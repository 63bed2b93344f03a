"""Stage `clip_image`: CLIP global image embeddings, one shard per manifest slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
from pipeline import extract
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.clip_image(params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, "clip_image", expected(params)["clip_image"], compute, rank)


if __name__ == "__main__":
    main()
