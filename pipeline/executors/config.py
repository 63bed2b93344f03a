"""Which engine runs the feature stages' shards: read from outside params.yaml, so switching
engines never changes a DVC dependency (and reruns nothing). The file is ``$GRAPHCAP_EXECUTOR``
if set, else ``executor.yaml`` in the project root (git-ignored: it describes a machine, not a
result); without either, shards run in the stage's own process (``local``).

Every key is optional; the example in docs/clusters.md shows each one with its default."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.params import ParamsError, build

EXECUTOR_FILE = Path("executor.yaml")
EXECUTOR_ENV = "GRAPHCAP_EXECUTOR"
OPTIONAL = {"optional": True}


@dataclass(frozen=True)
class SlurmConfig:
    tasks: int = field(default=0, metadata=OPTIONAL)  # array tasks (workers); 0: one per shard to do
    max_running: int = field(default=0, metadata=OPTIONAL)  # --array=…%N: at most N at once; 0: no limit
    gpus_per_task: int = field(default=0, metadata=OPTIONAL)  # --gres=gpu:N; SLURM pins them (CUDA_VISIBLE_DEVICES)
    cpus_per_task: int = field(default=1, metadata={**OPTIONAL, "min": 1})
    partition: str = field(default="", metadata=OPTIONAL)  # "": the cluster's default partition
    mem: str = field(default="", metadata=OPTIONAL)  # --mem, e.g. 32G; "": the partition's default
    time: str = field(default="", metadata=OPTIONAL)  # --time, e.g. 04:00:00
    extra: list[str] = field(default_factory=list, metadata=OPTIONAL)  # more sbatch options: ["--account=lab"]
    poll_seconds: float = field(default=1.0, metadata=OPTIONAL)  # how often squeue is asked whether the array is done


@dataclass(frozen=True)
class RayConfig:
    address: str = field(default="", metadata=OPTIONAL)  # "": $RAY_ADDRESS, else a cluster on this machine ("auto")
    actors: int = field(default=2, metadata={**OPTIONAL, "min": 1})  # workers, each loads its extractor once
    gpus_per_actor: float = field(default=0.0, metadata=OPTIONAL)  # Ray pins each actor's GPUs (CUDA_VISIBLE_DEVICES)
    cpus_per_actor: float = field(default=1.0, metadata=OPTIONAL)


@dataclass(frozen=True)
class ExecutorConfig:
    engine: Literal["local", "slurm", "ray"] = field(default="local", metadata=OPTIONAL)
    retries: int = field(default=2, metadata={**OPTIONAL, "min": 0})  # rounds that rerun shards still missing
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata=OPTIONAL)
    ray: RayConfig = field(default_factory=RayConfig, metadata=OPTIONAL)


def executor_file() -> Path | None:
    """The executor file in force: ``$GRAPHCAP_EXECUTOR`` (which must exist), else executor.yaml."""
    named = os.environ.get(EXECUTOR_ENV)
    if named:
        if not Path(named).is_file():
            raise ParamsError(f"${EXECUTOR_ENV}={named}: no such file")
        return Path(named)
    return EXECUTOR_FILE if EXECUTOR_FILE.is_file() else None


def load_executor() -> ExecutorConfig:
    path = executor_file()
    if path is None:
        return ExecutorConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ParamsError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    try:
        return build(ExecutorConfig, raw, "executor")
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from err
