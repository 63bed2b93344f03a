"""Stage `clip_image`: CLIP global image embeddings, one shard per manifest slice."""
import numpy as np

from features.clip import encode_images, load_clip
from pipeline.datasets import image_paths
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import for_each_shard, load_manifest, start


def main() -> None:
    params = start()
    manifest = load_manifest()
    clip = load_clip(params.clip, device_of(params.store.device))

    def compute(shard: int, entries: list[dict]) -> dict[str, np.ndarray]:
        paths = image_paths(manifest, entries)
        embeddings = encode_images(clip, paths, params.clip.batch_size, params.store.num_workers)
        return {"embeddings": embeddings.astype(np.float16)}

    for_each_shard(params, manifest, "clip_image", expected(params)["clip_image"], compute)


if __name__ == "__main__":
    main()
