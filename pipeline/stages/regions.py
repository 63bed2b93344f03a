"""Stage `regions`: Faster R-CNN boxes, scores, labels and RoI features, one shard per slice."""
import numpy as np
import torch
from torchvision.transforms.functional import to_tensor
from tqdm import tqdm

from features.images import image_batches
from features.regions import detect_regions, load_detector, pad_regions
from pipeline.datasets import image_paths
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.stages.common import for_each_shard, load_manifest, start


def main() -> None:
    params = start()
    manifest = load_manifest()
    device = device_of(params.store.device)
    detector, _ = load_detector(params.regions, device)

    def compute(shard: int, entries: list[dict]) -> dict[str, np.ndarray]:
        paths = image_paths(manifest, entries)
        found, sizes = [None] * len(paths), np.zeros((len(paths), 2), np.int32)
        loader = image_batches(paths, to_tensor, params.regions.batch_size, params.store.num_workers, stack=False)
        for indices, images in tqdm(loader, desc="regions", unit="batch", leave=False):
            with torch.no_grad():
                results = detect_regions(detector, [img.to(device) for img in images])
            for i, image, result in zip(indices, images, results):
                found[i], sizes[i] = result, image.shape[-2:]
        return {**pad_regions(found, params.regions.max_regions), "image_sizes": sizes}

    for_each_shard(params, manifest, "regions", expected(params)["regions"], compute)


if __name__ == "__main__":
    main()
