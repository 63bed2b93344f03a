"""The SLURM engine: a job array whose tasks are feature workers (`sbatch --array`), each taking
shards from the round's list until none is left, so a slow node holds up no one; the stage
polls `squeue` until the array has ended and cancels it (`scancel`) if the stage is stopped."""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import time

from features.errors import StoreError
from pipeline.app import on_stop
from pipeline.executors.config import SlurmConfig
from pipeline.executors.run import ShardRun

log = logging.getLogger(__name__)


class SlurmEngine:
    name = "slurm"

    def __init__(self, config: SlurmConfig):
        self.config = config
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if not shutil.which(tool)]
        if missing:
            raise StoreError(f"executor.engine slurm: {', '.join(missing)} not found on PATH (run the stage on a "
                             "SLURM login node, or set engine: local)")

    def sbatch_args(self, run: ShardRun) -> list[str]:
        c = self.config
        tasks = min(c.tasks or len(run.shards), len(run.shards))
        array = f"0-{tasks - 1}" + (f"%{c.max_running}" if c.max_running else "")
        args = ["--parsable", f"--array={array}", f"--job-name=graphcap-{run.kind}",
                f"--output={run.folder}/logs/task-%a.log", f"--cpus-per-task={c.cpus_per_task}"]
        args += [f"--gres=gpu:{c.gpus_per_task}"] if c.gpus_per_task else []
        args += [f"--{key}={value}" for key, value in (("partition", c.partition), ("mem", c.mem), ("time", c.time))
                 if value]
        return args + list(c.extra)

    def run(self, run: ShardRun) -> None:
        script = run.folder / "worker.sbatch"
        script.write_text(f"#!/bin/bash\ncd {shlex.quote(str(run.project))}\nexec {shlex.join(run.worker_command())}\n")
        submitted = subprocess.run(["sbatch", *self.sbatch_args(run), str(script)], capture_output=True, text=True)
        if submitted.returncode:
            raise StoreError(f"sbatch refused the {run.kind} array: {' '.join(submitted.stderr.split())}")
        job = submitted.stdout.strip().split(";")[0]
        log.info("%s: %d shards to SLURM job array %s (logs: %s/logs)", run.kind, len(run.shards), job, run.folder)
        with on_stop(lambda: subprocess.run(["scancel", job], capture_output=True)):
            while self._running(job):
                time.sleep(self.config.poll_seconds)
        (run.folder / "slurm_job").write_text(job + "\n")

    @staticmethod
    def _running(job: str) -> bool:
        """Whether any task of the array is pending or running (squeue forgets ended jobs)."""
        listed = subprocess.run(["squeue", "--noheader", "--array", "--jobs", job, "--format=%i"],
                                capture_output=True, text=True)
        return listed.returncode == 0 and bool(listed.stdout.strip())
