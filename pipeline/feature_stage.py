"""The one entry point the per-image feature stages share (clip_image, regions, knn,
region_keywords, region_clip): each is this with its kind.

Where the shards are computed is the executor's choice (pipeline/executors/config.py: outside
params.yaml, so it never reruns a stage): in this process (``local``, or this rank's share under
``--shard i/n`` / torchrun), or handed to a SLURM job array or a Ray actor pool, after which the
stage checks every shard of the kind and retries the missing ones a bounded number of rounds."""
import argparse
import logging
from pathlib import Path

from features.errors import StoreError
from features.shards import Rank, finish_kind, for_each_shard, missing_shards
from features.store import shard_slices
from pipeline import extract
from pipeline.app import load_manifest, start, stopping_on_signals
from pipeline.executors.config import ExecutorConfig, load_executor
from pipeline.executors.engines import make_engine
from pipeline.executors.run import ShardRun
from pipeline.executors.worker import run_worker
from pipeline.params import Params
from pipeline.provenance import expected
from pipeline.runtime import device_of

log = logging.getLogger(__name__)


def run_stage(kind: str) -> None:
    parser = argparse.ArgumentParser(description=f"the {kind} feature stage")
    parser.add_argument("--shard", default="", help="i/n: compute only shards s with s %% n == i (a rank)")
    parser.add_argument("--worker", type=Path, help="run as an engine's worker on this run folder")
    args = parser.parse_args()
    if args.worker:
        return run_worker(kind, args.worker)
    rank = Rank.from_spec(args.shard)
    params, executor = start(), load_executor()
    manifest = load_manifest()
    if executor.engine == "local" or rank.count > 1:
        compute = extract.IMAGE_FEATURES[kind](params, manifest, device_of(params.store.device))
        for_each_shard(params.store, manifest, kind, expected(params)[kind], compute, rank)
    else:
        with stopping_on_signals():  # a stopped stage cancels what it submitted
            distribute(params, manifest, kind, executor)


def distribute(params: Params, manifest: dict, kind: str, executor: ExecutorConfig) -> None:
    """Hand the missing shards of ``kind`` to the executor's engine, round after round while some
    are still missing (at most 1 + ``retries`` rounds), then require every shard to be complete."""
    engine, provenance = make_engine(executor), expected(params)[kind]
    store, n_shards = Path(params.store.dir), len(shard_slices(len(manifest["images"]), params.store.shard_size))
    failures: dict[int, str] = {}
    missing = missing_shards(params.store, manifest, kind, provenance)
    for round_ in range(1 + executor.retries):
        if not missing:
            break
        log.info("%s: round %d, %d of %d shards to the %s engine", kind, round_ + 1, len(missing), n_shards,
                 engine.name)
        run = ShardRun.create(kind, missing, round_)
        engine.run(run)
        failures.update(run.failures())
        missing = missing_shards(params.store, manifest, kind, provenance)  # each shard read in full, once a round
    for partial in sorted((store / kind).glob("*.tmp")):  # every worker has ended: what killed ones left
        partial.unlink(missing_ok=True)
    if missing:
        raise StoreError(f"{kind}: {len(missing)} of {n_shards} shards still missing after {1 + executor.retries} "
                         f"rounds on {engine.name}: " + "; ".join(
                             f"shard {i} ({failures.get(i, 'its worker was stopped')})" for i in missing[:5])
                         + f"; worker logs in {run.folder / 'logs'}; run the stage again to retry them")
    finish_kind(store, kind, n_shards)
