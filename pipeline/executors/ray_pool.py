"""The Ray engine: a pool of feature-worker actors on a Ray cluster (``$RAY_ADDRESS``), each
holding its extractor loaded once, each pinned by Ray to its own GPUs when ``gpus_per_actor`` is
set. Shards go to whichever actor is free, so a slow node holds up no one; features never pass
through Ray's object store (an actor writes its shard into the shared store and returns nothing
but whether it succeeded). When an actor's node is lost, its shard goes to the actors left (a
restarted actor could wait forever for resources a lost node took with it); the stage's next
round starts a fresh pool for whatever is still missing."""
from __future__ import annotations

import logging
import os

from features.errors import StoreError
from pipeline.executors.config import RayConfig
from pipeline.executors.run import ShardRun
from pipeline.executors.worker import ShardWorker

log = logging.getLogger(__name__)


class RayEngine:
    name = "ray"

    def __init__(self, config: RayConfig, retries: int):
        try:
            import ray  # noqa: F401 - an optional dependency: only this engine needs it
        except ImportError as err:
            raise StoreError("executor.engine ray: Ray is not installed (pip install 'ray[default]')") from err
        self.config, self.retries = config, retries

    def run(self, run: ShardRun) -> None:
        import ray

        address = self.config.address or os.environ.get("RAY_ADDRESS") or "auto"
        try:  # workers import this project's code from the shared file system, not from the driver
            ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(run.project)}},
                     log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as err:
            raise StoreError(f"executor.engine ray: no Ray cluster at {address} ({err})") from err
        try:
            actor = ray.remote(ShardWorker).options(num_cpus=self.config.cpus_per_actor,
                                                    num_gpus=self.config.gpus_per_actor)
            pool = [actor.remote(run.kind, str(run.project)) for _ in range(min(self.config.actors, len(run.shards)))]
            log.info("%s: %d shards to %d Ray actors at %s", run.kind, len(run.shards), len(pool), address)
            _dispatch(ray, pool, run, self.retries)
        finally:
            ray.shutdown()


def _dispatch(ray, pool: list, run: ShardRun, retries: int) -> None:
    """Hand each shard to the next free actor until all are handed and answered. An actor that
    dies (its node lost, killed) takes no more work and its shard goes back to the queue, at most
    ``retries`` times: the survivors take it, so a lost node costs only the shards it held."""
    queue, free, pending, requeued = list(run.shards), list(pool), {}, dict.fromkeys(run.shards, 0)
    while queue or pending:
        while queue and free:
            worker = free.pop()
            index = queue.pop(0)
            pending[worker.write.remote(run, index)] = (worker, index)
        if not pending:
            log.warning("%s: no Ray actor left; shards %s not handed out", run.kind, queue)
            return
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        worker, index = pending.pop(ready)
        try:
            ray.get(ready)
            free.append(worker)
        except ray.exceptions.RayActorError as err:
            log.warning("%s shard %d: its actor is gone (%s)", run.kind, index, str(err).splitlines()[0])
            if requeued[index] < retries:
                requeued[index] += 1
                queue.append(index)
