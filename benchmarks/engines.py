"""Engine benchmark: each per-image feature stage's wall time on the same shards in its own process
(local), as a SLURM job array of 2 tasks, and on a 2-actor Ray pool, measured side by side in one
run on the clusters the tests start on this machine (tests/clusters.py), and each engine's
overhead per shard.

    python benchmarks/engines.py [--images 96] [--shard-size 16]

An engine's overhead is printed in three parts: start-up (submission or actor creation, the
worker's Python and model loading: once per round), the stage's final check of every shard
(once per round), and the per-shard cost between shards (claiming or dispatching, the report).
Every shard an engine writes is compared with the local one.
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


def run_kind(project: Path, kind: str, env: dict[str, str]) -> dict[str, float]:
    """One stage with its shards removed: its wall time, and from the workers' reports the
    seconds before the first worker was ready (start-up: submission, Python, model loading), the
    seconds after the last shard (the stage's check of every shard), and the worker-seconds
    between a worker's first and last shard not spent writing shards."""
    for shard in (project / "data/features" / kind).glob("*.h5"):
        shard.unlink()
    start = time.time()
    subprocess.run([sys.executable, "-m", f"pipeline.stages.{kind}"], cwd=project, env=env, check=True,
                   capture_output=True)
    end = time.time()
    reports = [json.loads(p.read_text()) for p in (project / f".graphcap/runs/{kind}-0/workers").glob("*.json")]
    reports = [r for r in reports if r["done"]]
    if not reports:
        return {"wall": end - start}
    writing = sum(s for r in reports for s in r["seconds"].values())
    return {"wall": end - start, "startup": min(r["started"] for r in reports) - start,
            "check": end - max(r["last"] for r in reports),
            "between": sum(r["last"] - r["started"] for r in reports) - writing}


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
    print("wall s: the stage from start to end; start-up s: until its first worker was ready; check s: after the last "
          "shard; per shard s: worker time between shards not spent writing them, per shard")
    print(f"{'stage':16} {'local':>6} | {'slurm: wall':>11} {'start-up':>8} {'check':>6} {'per shard':>9} | "
          f"{'ray: wall':>9} {'start-up':>8} {'check':>6} {'per shard':>9}")
    for kind in KINDS:
        cells = [f"{results['local'][kind]['wall']:6.1f}"]
        for engine in ("slurm", "ray"):
            r = results[engine][kind]
            cells.append(f"{r['wall']:11.1f} {r['startup']:8.1f} {r['check']:6.1f} {r['between'] / n_shards:9.3f}")
        print(f"{kind:16} " + " | ".join(cells))
    for name in ("slurm", "ray"):
        print(f"{name}: shards byte-identical to local: {made[name] == made['local']}")


if __name__ == "__main__":
    main()
