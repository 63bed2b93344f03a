"""DDP under torchrun (gloo, 2 CPU processes), and as 2 tasks of the SLURM training template on a
real one-node cluster, matches the one-process run: each rank trains on its share of the same
global batches and DDP averages the gradients."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.clusters import slurm_cluster
from tests.conftest import ROOT

SCRIPT = Path(__file__).with_name("distributed_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(launcher: list[str], language: Path, out: Path) -> tuple[dict, dict]:
    subprocess.run([*launcher, str(SCRIPT), str(language), str(out)], check=True, env=ENV, timeout=300)
    return torch.load(out / "final.pt", weights_only=True), json.loads((out / "best.json").read_text())


def _assert_same_training(one: dict, best_one: dict, two: dict, best_two: dict) -> None:
    assert best_two["world_size"] == 2
    assert one.keys() == two.keys()
    for name in one:  # the same updates up to float summation order
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert abs(best_two["score"] - best_one["score"]) < 1e-3 and best_two["epoch"] == best_one["epoch"]

def test_two_processes_match_one(tiny_language, tmp_path):
    one, best_one = _run([sys.executable], tiny_language, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two, best_two = _run(torchrun, tiny_language, tmp_path / "two")
    _assert_same_training(one, best_one, two, best_two)
    losses = [(tmp_path / run / "live/plots/metrics/train/loss_total.tsv").read_text().splitlines() for run in ("one", "two")]
    for row_one, row_two in zip(*losses):  # logged losses: the mean over ranks equals the global mean
        if row_one.startswith("step"):
            continue
        assert abs(float(row_one.split("\t")[-1]) - float(row_two.split("\t")[-1])) < 1e-4
    assert not (tmp_path / "two/ckpt.pt").exists() and (tmp_path / "two/model/config.json").exists()


@pytest.mark.cluster
def test_the_slurm_template_trains_two_tasks_like_one_process(tiny_language, tmp_path):
    """slurm/train.sbatch as a user submits it (two tasks, one GPU each), its command replaced by
    the small training script: SLURM starts the ranks, the template tells each its place."""
    with slurm_cluster(tmp_path / "slurm") as env:
        one, best_one = _run([sys.executable], tiny_language, tmp_path / "one")
        subprocess.run(["sbatch", "--wait", "--ntasks-per-node=2", "--cpus-per-task=1", f"--output={tmp_path}/%j.log",
                        str(ROOT / "slurm/train.sbatch"), sys.executable, str(SCRIPT), str(tiny_language),
                        str(tmp_path / "two")], check=True, env=env,
                       cwd=ROOT, timeout=600)
    two, best_two = torch.load(tmp_path / "two/final.pt", weights_only=True), json.loads(
        (tmp_path / "two/best.json").read_text())
    _assert_same_training(one, best_one, two, best_two)
