"""Stage `regions`: Faster R-CNN boxes, scores, labels and RoI features, one shard per slice.
Resumable; ``--shard i/n`` (or torchrun's RANK/WORLD_SIZE) computes only this rank's shards."""
import numpy as np
from torchvision.transforms.functional import to_tensor

from features.images import image_batches
from features.regions import detect_regions, load_detector, pad_regions, region_dim
from pipeline.datasets import image_paths
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    device = device_of(params.store.device)
    detector, _ = load_detector(params.regions, device)
    dim = region_dim(detector, params.regions)
    max_side = 2 * params.regions.max_size  # decode huge photos at reduced size; the detector shrinks them anyway

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        paths = image_paths(manifest, entries)
        found, sizes, errors = [None] * len(paths), np.zeros((len(paths), 2), np.int32), {}
        for batch in image_batches(paths, to_tensor, params.regions.batch_size, params.store.num_workers, max_side):
            good = [d for d in batch if d.image is not None]
            errors.update({d.index: d.error for d in batch if d.image is None})
            results = detect_regions(detector, [d.image.to(device) for d in good], params.regions) if good else []
            for d, result in zip(good, results):
                scale = np.array([d.size[1] / d.image.shape[-1], d.size[0] / d.image.shape[-2]] * 2, np.float32)
                result.boxes *= scale  # to the original image's pixels
                found[d.index], sizes[d.index] = result, d.size
            progress(len(batch))
        return {**pad_regions(found, params.regions.max_regions, dim), "image_sizes": sizes}, errors

    for_each_shard(params, manifest, "regions", expected(params)["regions"], compute, rank)


if __name__ == "__main__":
    main()
