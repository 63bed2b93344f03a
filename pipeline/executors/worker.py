"""A feature worker: loads its extractor once, then writes the shards it is handed, each through
the same code as the stage's own loop (:func:`features.shards.write_one_shard`), so a shard is
byte-identical whichever worker made it. SLURM array tasks run it as a process
(``python -m pipeline.stages.<kind> --worker <run folder>``); Ray runs it as an actor."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from features.shards import missing_shards, write_one_shard
from pipeline import extract
from pipeline.app import load_manifest, one_line, start
from pipeline.executors.run import ShardRun
from pipeline.provenance import expected
from pipeline.runtime import device_of

log = logging.getLogger(__name__)


class ShardWorker:
    def __init__(self, kind: str, project: str | None = None):
        if project:  # a Ray actor starts elsewhere; paths in params.yaml are the project's
            os.chdir(project)
        self.kind, self.params, self.manifest = kind, start(), load_manifest()
        self.provenance = expected(self.params)[kind]
        device = device_of(self.params.store.device)
        self.compute = extract.IMAGE_FEATURES[kind](self.params, self.manifest, device)
        self.report: dict[str, Any] = {
            "host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "slurm_task": os.environ.get("SLURM_ARRAY_TASK_ID"), "ray_node": _ray_node(),
            "started": time.time(), "last": None, "done": [], "seconds": {}, "failed": {}}

    def write(self, run: ShardRun, index: int) -> bool:
        """Write shard ``index`` unless it is already current; its outcome goes into this worker's
        report in the run folder. A failure is recorded, not raised: the stage names it."""
        start = time.perf_counter()
        try:
            if index in missing_shards(self.params.store, self.manifest, self.kind, self.provenance, only=[index]):
                write_one_shard(self.params.store, self.manifest, self.kind, self.provenance, self.compute, index)
            self.report["done"].append(index)
            self.report["seconds"][str(index)] = round(time.perf_counter() - start, 3)
        except Exception as err:  # noqa: BLE001 - any failure of this shard is its reason, logged in full
            log.exception("%s shard %d failed", self.kind, index)
            self.report["failed"][str(index)] = one_line(err)
        self.report["last"] = time.time()
        run.save_report(self.report)
        return str(index) not in self.report["failed"]

    def work(self, run: ShardRun) -> bool:
        """Take and write shards of the run until none is left unclaimed."""
        run.save_report(self.report)  # where it runs, even before its first shard is done
        return all([self.write(run, index) for index in run.shards if run.claim(index)])


def _ray_node() -> str | None:
    if "ray" not in sys.modules:
        return None
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def run_worker(kind: str, folder: Path) -> None:
    """A worker process's main: exits non-zero if any shard it took failed."""
    if not ShardWorker(kind).work(ShardRun.open(folder)):
        raise SystemExit(1)
