"""Stage `clip_image`: CLIP global image embeddings, one shard per manifest slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
import numpy as np

from features.clip import encode_images, load_clip
from pipeline.datasets import image_paths
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    clip = load_clip(params.clip, device_of(params.store.device))

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        arrays, errors = encode_images(clip, image_paths(manifest, entries), params.clip.batch_size,
                                       params.store.num_workers, progress, params.clip.cache_tokens)
        return {name: array.astype(np.float16) for name, array in arrays.items()}, errors

    for_each_shard(params, manifest, "clip_image", expected(params)["clip_image"], compute, rank)


if __name__ == "__main__":
    main()
