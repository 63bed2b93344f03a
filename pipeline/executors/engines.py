"""Engines that run a feature stage's missing shards beyond its own process (docs/clusters.md).

The contract of an engine: ``engine.run(run)`` blocks until every worker it started for the
:class:`~pipeline.executors.run.ShardRun` has ended, each shard of ``run.shards`` having been
handed to a worker at least once. Workers write shards into the shared store and their reports
into ``run.folder``; features never pass through the engine. ``run`` does not raise for a failed
shard (the stage checks the store afterwards and retries), only when the engine itself cannot be
used, as a user error that names what is missing. ``local`` is no engine: the stage's own loop.
"""
from __future__ import annotations

from typing import Protocol

from pipeline.executors.config import ExecutorConfig
from pipeline.executors.run import ShardRun


class Engine(Protocol):
    name: str

    def run(self, run: ShardRun) -> None: ...


def make_engine(config: ExecutorConfig) -> Engine:
    if config.engine == "slurm":
        from pipeline.executors.slurm import SlurmEngine
        return SlurmEngine(config.slurm)
    if config.engine == "ray":
        from pipeline.executors.ray_pool import RayEngine
        return RayEngine(config.ray, config.retries)
    raise ValueError(f"executor.engine: {config.engine!r} runs in the stage's own process, not through an engine")
