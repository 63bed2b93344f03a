"""The feature stages on real engines: a SLURM job array on a one-node cluster started here, and a
Ray actor pool on a two-node cluster started here (tests/clusters.py). Through `dvc repro`,
shards made by an engine's workers are byte-identical to the stage's own loop and switching
engines reruns nothing; a worker stopped mid-stage leaves a store that the next rounds complete."""
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.executors.config import ExecutorConfig, load_executor
from pipeline.executors.run import ShardRun
from pipeline.params import ParamsError
from tests.clusters import ray_cluster, slurm_cluster
from tests.conftest import tiny_project

KINDS = ("clip_image", "regions", "knn", "region_keywords", "region_clip")


def test_the_executor_file_is_optional_strict_and_named_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRAPHCAP_EXECUTOR", raising=False)
    assert load_executor() == ExecutorConfig()  # nothing written: the stage's own process
    Path("executor.yaml").write_text("engine: slurm\nslurm: {gpus_per_task: 1, extra: ['--account=lab']}\n")
    config = load_executor()
    assert config.engine == "slurm" and config.slurm.gpus_per_task == 1 and config.retries == 2
    Path("other.yaml").write_text("engine: ray\nray: {actors: 4, gpus_per_actor: 1}\n")
    monkeypatch.setenv("GRAPHCAP_EXECUTOR", "other.yaml")
    assert load_executor().ray.actors == 4
    Path("other.yaml").write_text("engine: ray\nray: {actor: 4}\n")
    with pytest.raises(ParamsError, match=r"other.yaml: executor.ray.actor: unknown key"):
        load_executor()
    Path("other.yaml").write_text("engine: spark\n")
    with pytest.raises(ParamsError, match="executor.engine: 'spark' is not one of local | slurm | ray"):
        load_executor()
    monkeypatch.setenv("GRAPHCAP_EXECUTOR", "absent.yaml")
    with pytest.raises(ParamsError, match=r"\$GRAPHCAP_EXECUTOR=absent.yaml: no such file"):
        load_executor()


def test_a_shard_is_claimed_by_one_worker_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = ShardRun.create("clip_image", [0, 1, 2], 0)
    assert ShardRun.open(run.folder) == run and run.project == tmp_path
    taken = []
    threads = [threading.Thread(target=lambda: taken.extend(i for i in run.shards if run.claim(i))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [0, 1, 2]


@pytest.fixture(scope="module")
def features_made_here(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A tiny project (12 images, 3 shards of 4) whose feature kinds were computed by the stages'
    own loop, and every shard's bytes."""
    from pipeline.stages import clip_image, clip_text, knn, prepare, region_clip, region_keywords, regions, world

    project = tiny_project(tmp_path_factory.mktemp("engines"),
                           (world, prepare, clip_image, regions, clip_text, knn, region_keywords, region_clip),
                           n_train=8, store={"optional_kinds": ["region_clip"]})
    return project, _shards(project)


def _shards(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes()
            for kind in KINDS for p in sorted((project / "data/features" / kind).glob("*.h5"))}


def _stage(project: Path, kind: str, env: dict[str, str], executor: dict) -> subprocess.CompletedProcess:
    (project / "executor.yaml").write_text(yaml.safe_dump(executor))
    return subprocess.run([sys.executable, "-m", f"pipeline.stages.{kind}"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def _workers(project: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in (project / ".graphcap/runs" / f"{kind}-0/workers").glob("*.json")]


@pytest.mark.cluster
def test_a_slurm_array_cancelled_mid_stage_is_retried_and_the_store_completes(features_made_here, tmp_path):
    project, local = features_made_here
    with slurm_cluster(tmp_path / "slurm") as env:
        for shard in (project / "data/features/regions").glob("*.h5"):
            shard.unlink()
        (project / "executor.yaml").write_text(yaml.safe_dump({"engine": "slurm", "slurm": {"tasks": 2}}))
        stage = subprocess.Popen([sys.executable, "-m", "pipeline.stages.regions"], cwd=project, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _cancel_the_array_once_working(project, env)
        output = stage.communicate(timeout=600)[0]
    assert stage.returncode == 0, output[-3000:]
    assert "round 2" in output  # the cancelled shards went to a second round
    assert _shards(project) == local


def _cancel_the_array_once_working(project: Path, env: dict[str, str]) -> None:
    """Cancel the whole array the moment its first shard is claimed: that shard is being computed,
    not yet written (the job id is looked up before, so no squeue call delays the cancel)."""
    claims, deadline = project / ".graphcap/runs/regions-0/claims", time.monotonic() + 300
    job = ""
    while not job:
        assert time.monotonic() < deadline, "no SLURM array was submitted"
        job = subprocess.run(["squeue", "--noheader", "--format=%F"], env=env, capture_output=True,
                             text=True).stdout.strip()
    while not (claims.exists() and any(claims.iterdir())):
        assert time.monotonic() < deadline, "no SLURM task took a shard"
        time.sleep(0.02)
    subprocess.run(["scancel", job.split()[0]], env=env, check=True)


@pytest.mark.cluster
def test_stopping_a_ray_node_mid_stage_still_completes_the_store(features_made_here):
    project, local = features_made_here
    with ray_cluster() as env:
        for shard in (project / "data/features/regions").glob("*.h5"):
            shard.unlink()
        (project / "executor.yaml").write_text(yaml.safe_dump({"engine": "ray", "ray": {"actors": 2}}))
        stage = subprocess.Popen([sys.executable, "-m", "pipeline.stages.regions"], cwd=project, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _stop_ray_node(project, int(env["RAY_WORKER_NODE_PORT"]))
        output = stage.communicate(timeout=600)[0]
    assert stage.returncode == 0, output[-3000:]  # the stage's last check: every shard complete and current
    assert "its actor is gone" in output
    assert _shards(project).keys() == local.keys()  # (one thread per actor here: bytes may round differently)


def _stop_ray_node(project: Path, node_manager_port: int) -> None:
    """Kill -9 the second node's raylet and its workers once a shard is being worked on."""
    workers = project / ".graphcap/runs/regions-0/workers"
    deadline = time.monotonic() + 300
    while not (workers.exists() and any(workers.iterdir())):
        assert time.monotonic() < deadline, "no Ray actor started"
        time.sleep(0.2)
    raylet = next(p for p in psutil.process_iter(["cmdline"])
                  if any(f"--node_manager_port={node_manager_port}" in a for a in p.info["cmdline"] or ()))
    for process in [*raylet.children(recursive=True), raylet]:
        process.kill()


def test_a_missing_engine_is_one_line_naming_it(features_made_here):
    project, _ = features_made_here
    env = {**os.environ, "PATH": "/nonexistent", "GRAPHCAP_EXECUTOR": ""}
    done = _stage(project, "clip_image", env, {"engine": "slurm"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith("sbatch, squeue, scancel not found on PATH "
                                                         "(run the stage on a SLURM login node, or set engine: local)")


FEATURE_STAGES = ("clip_image", "regions", "knn", "region_keywords", "optional@region_clip")


@pytest.fixture(scope="module")
def repro_here(tmp_path_factory) -> tuple[Path, dict[str, bytes], str]:
    """The tiny e2e project after a local `dvc repro` of the feature stages: shards and dvc.lock."""
    from tests.test_e2e import _make_project

    project = _make_project(tmp_path_factory.mktemp("dvc-engines"))
    _repro(project, dict(os.environ), *FEATURE_STAGES)
    return project, _shards(project), (project / "dvc.lock").read_text()


def _repro(project: Path, env: dict[str, str], *targets: str) -> set[str]:
    dvc = Path(sys.executable).with_name("dvc")
    done = subprocess.run([str(dvc), "repro", *targets], cwd=project, capture_output=True, text=True, timeout=1200,
                          env={**env, "PATH": f"{dvc.parent}:{env['PATH']}"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return set(re.findall(r"Running stage '([\w@/.:-]+)'", done.stdout))


@pytest.mark.cluster
@pytest.mark.parametrize("engine", ["slurm", "ray"])
def test_dvc_repro_on_an_engine_matches_the_local_run_and_switching_reruns_nothing(repro_here, engine, tmp_path):
    project, local, lock = repro_here
    executor = tmp_path / "executor.yaml"  # outside the project, named by the environment
    # one GPU per worker, which the engine pins; as many threads per Ray actor as the local run had
    # (Ray sets OMP_NUM_THREADS to an actor's CPUs; CPU kernels round differently with another count)
    executor.write_text(yaml.safe_dump({"engine": "slurm", "slurm": {"tasks": 2, "gpus_per_task": 1}}
                                       if engine == "slurm" else {"engine": "ray", "ray": {
                                           "actors": 2, "gpus_per_actor": 1, "cpus_per_actor": os.cpu_count()}}))
    with (slurm_cluster(tmp_path / "slurm") if engine == "slurm" else ray_cluster()) as env:
        env = {**env, "GRAPHCAP_EXECUTOR": str(executor)}
        assert _repro(project, env, *FEATURE_STAGES) == set()  # the engine is no dependency
        for kind in KINDS:
            for shard in (project / "data/features" / kind).glob("*.h5"):
                shard.unlink()
        assert _repro(project, env, *FEATURE_STAGES) == set(FEATURE_STAGES)
    assert _shards(project) == local
    assert (project / "dvc.lock").read_text() == lock
    workers = _workers(project, "regions")
    assert sorted(i for w in workers for i in w["done"]) == [0, 1, 2]  # each shard by one worker
    if engine == "slurm":  # two tasks, SLURM pinned one GPU to each
        assert sorted((w["slurm_task"], w["cuda_visible_devices"]) for w in workers) == [("0", "0"), ("1", "1")]
    else:  # one actor per node, each on its node's one GPU
        assert len({w["ray_node"] for w in workers}) == 2 and {w["cuda_visible_devices"] for w in workers} == {"0"}
