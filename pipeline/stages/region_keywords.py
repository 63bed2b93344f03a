"""Stage `region_keywords`: each region's local keywords, from the detector's labels or by FAISS
retrieval over the CLIP-encoded object bank with the region crop's CLIP embedding."""
from pathlib import Path

import numpy as np

from features.clip import encode_region_crops, load_clip
from features.keywords import label_keywords, retrieve_keywords
from features.store import read_bank
from pipeline.datasets import image_paths
from pipeline.provenance import expected, keyword_bank
from pipeline.runtime import device_of
from pipeline.stages.common import Rank, for_each_shard, load_manifest, read_upstream, start


def main() -> None:
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    records = expected(params)
    cfg = params.keywords
    retrieval = cfg.local_source == "retrieval"
    if retrieval:
        clip = load_clip(params.clip, device_of(params.store.device))
        _, bank = read_bank(Path(params.store.dir) / "keywords.h5", "object", keyword_bank(params))
    elif cfg.local_source != "labels":
        raise ValueError(f"keywords.local_source: unknown {cfg.local_source!r} (labels | retrieval)")

    def compute(shard: int, entries: list[dict], progress) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        regions, errors = read_upstream(params, "regions", shard, records["regions"], entries,
                                        ("boxes", "counts", "labels", "scores"))
        if not retrieval:
            ids, scores = label_keywords(regions["labels"], regions["scores"])
        else:
            crops, crop_errors = encode_region_crops(clip, image_paths(manifest, entries), regions["boxes"],
                                                     regions["counts"], params.store.num_workers)
            errors.update(crop_errors)
            real = np.arange(crops.shape[1])[None, :] < regions["counts"][:, None]  # (n, N)
            real[list(errors)] = False
            ids = np.full((*real.shape, cfg.retrieval_k), -1, np.int32)
            scores = np.zeros((*real.shape, cfg.retrieval_k), np.float32)
            if real.any():
                ids[real], scores[real] = retrieve_keywords(crops[real], bank, cfg.retrieval_k)
        progress(len(entries))
        return {"ids": ids, "scores": scores.astype(np.float16)}, errors

    for_each_shard(params, manifest, "region_keywords", records["region_keywords"], compute, rank)


if __name__ == "__main__":
    main()
