"""The one entry point the per-image feature stages share (clip_image, regions, knn,
region_keywords, region_clip): each is this with its kind."""
from pipeline import extract
from pipeline.app import load_manifest, start
from pipeline.provenance import expected
from pipeline.runtime import device_of
from pipeline.shards import Rank, for_each_shard


def run_stage(kind: str) -> None:
    """This rank's missing shards of ``kind``, computed by its factory in :mod:`pipeline.extract`
    (``--shard i/n``, or torchrun's RANK/WORLD_SIZE, pick the rank)."""
    rank = Rank.from_args()
    params = start()
    manifest = load_manifest()
    compute = extract.IMAGE_FEATURES[kind](params, manifest, device_of(params.store.device))
    for_each_shard(params, manifest, kind, expected(params)[kind], compute, rank)
