"""Engine benchmark: each per-image feature stage's wall time on the same shards in its own process
(local), as a SLURM job array of 2 tasks, and on a 2-actor Ray pool, measured side by side in one
run on the clusters the tests start on this machine (tests/clusters.py), and each engine's
overhead per shard.

    python benchmarks/engines.py [--images 96] [--shard-size 16]

Overhead per shard = (stage wall time × workers − the seconds workers spent writing shards) /
shards: worker start-up, model loading, scheduling, polling and the stage's final check of every
shard, spread over the shards. Every shard an engine writes is compared with the local one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.stages import prepare, world  # noqa: E402
from tests.clusters import ray_cluster, slurm_cluster  # noqa: E402
from tests.conftest import tiny_project  # noqa: E402

KINDS = ("clip_image", "regions", "knn", "region_keywords", "region_clip")
WORKERS = 2


def run_kind(project: Path, kind: str, env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, worker seconds inside shards, workers) of one stage with its shards removed."""
    for shard in (project / "data/features" / kind).glob("*.h5"):
        shard.unlink()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"pipeline.stages.{kind}"], cwd=project, env=env, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    reports = [json.loads(p.read_text()) for p in (project / f".graphcap/runs/{kind}-0/workers").glob("*.json")]
    return wall, sum(s for r in reports for s in r["seconds"].values()), len(reports)


def run_engine(project: Path, engine: str, cluster, executor: dict) -> dict[str, tuple[float, float, int]]:
    (project / "executor.yaml").write_text(yaml.safe_dump(executor))
    with cluster as env:
        env = {**(env or os.environ), "GRAPHCAP_EXECUTOR": str(project / "executor.yaml")}
        times = {kind: run_kind(project, kind, env) for kind in KINDS}
    return times


def shard_bytes(project: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for kind in KINDS for p in sorted((project / "data/features" / kind).glob("*.h5"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="training images of the demo world")
    parser.add_argument("--shard-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        project = tiny_project(Path(folder), (world, prepare), n_train=args.images,
                               store={"shard_size": args.shard_size, "optional_kinds": ["region_clip"]})
        n_images = len(json.loads((project / "data/manifest.json").read_text())["images"])
        n_shards = -(-n_images // args.shard_size)
        with tempfile.TemporaryDirectory() as slurm_root:
            engines = {
                "local": ({"engine": "local"}, nullcontext(dict(os.environ))),
                "slurm": ({"engine": "slurm", "slurm": {"tasks": WORKERS}}, slurm_cluster(Path(slurm_root))),
                "ray": ({"engine": "ray", "ray": {"actors": WORKERS, "cpus_per_actor": os.cpu_count()}},
                        ray_cluster()),
            }
            results, made = {}, {}
            for name, (executor, cluster) in engines.items():
                results[name] = run_engine(project, name, cluster, executor)
                made[name] = shard_bytes(project)
    print(f"{n_images} images, {n_shards} shards of {args.shard_size}, {WORKERS} workers per engine, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'stage':16} {'local s':>8} {'slurm s':>8} {'ray s':>8}   overhead/shard: {'slurm s':>8} {'ray s':>8}")
    for kind in KINDS:
        walls = [results[e][kind][0] for e in ("local", "slurm", "ray")]
        overheads = [(results[e][kind][0] * results[e][kind][2] - results[e][kind][1]) / n_shards
                     for e in ("slurm", "ray")]
        print(f"{kind:16} {walls[0]:8.1f} {walls[1]:8.1f} {walls[2]:8.1f}   {'':15} {overheads[0]:8.2f} "
              f"{overheads[1]:8.2f}")
    for name in ("slurm", "ray"):
        print(f"{name}: shards byte-identical to local: {made[name] == made['local']}")


if __name__ == "__main__":
    main()
