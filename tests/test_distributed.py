"""DDP under torchrun (gloo, 2 CPU processes) matches the one-process run: each rank trains on its
share of the same global batches and DDP averages the gradients."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("distributed_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(launcher: list[str], language: Path, out: Path) -> tuple[dict, dict]:
    subprocess.run([*launcher, str(SCRIPT), str(language), str(out)], check=True, env=ENV, timeout=300)
    return torch.load(out / "final.pt", weights_only=True), json.loads((out / "best.json").read_text())


def test_two_processes_match_one(tiny_language, tmp_path):
    one, best_one = _run([sys.executable], tiny_language, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two, best_two = _run(torchrun, tiny_language, tmp_path / "two")
    assert best_two["world_size"] == 2
    assert one.keys() == two.keys()
    for name in one:  # the same updates up to float summation order
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert abs(best_two["score"] - best_one["score"]) < 1e-3 and best_two["epoch"] == best_one["epoch"]
    losses = [(tmp_path / run / "live/plots/metrics/train/loss_total.tsv").read_text().splitlines() for run in ("one", "two")]
    for row_one, row_two in zip(*losses):  # logged losses: the mean over ranks equals the global mean
        if row_one.startswith("step"):
            continue
        assert abs(float(row_one.split("\t")[-1]) - float(row_two.split("\t")[-1])) < 1e-4
    assert not (tmp_path / "two/ckpt.pt").exists() and (tmp_path / "two/model/config.json").exists()
