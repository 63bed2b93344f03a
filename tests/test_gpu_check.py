"""benchmarks/gpu_check.py: without CUDA it says so and exits 0; `--device cpu` runs its whole code
path (paper-size models with random weights, the stages' own extraction, the trainer's step and
the HDF5 loader) on a tiny input and prints every row of its table."""
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

# a CPU without native bf16 (this one) measures the extraction rows in fp32 only
ROWS = ("clip_image fp32 stage / pure fp32", "regions fp32 stage / pure fp32", "knn faiss / torch",
        "train step fp32, batch 2", "train step bf16, batch 2", "loader share of a step")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would measure it")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out


@pytest.mark.slow  # ~5.5 min on a 2-core CPU without AVX-512 (bf16 emulated): `make test-slow`
def test_cpu_dry_run_prints_every_row_with_figures(capsys):
    assert gpu_check.main(["--device", "cpu", "--images", "2", "--batch", "2", "--steps", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    for row in ROWS:
        line = next((line for line in out.splitlines() if line.startswith(row)), None)
        assert line is not None, f"no row {row!r} in:\n{out}"
        assert re.search(r"\d", line[len(row):]), line
    assert re.search(r"train step fp32, batch 2 +\d+\.\d+ s, peak [\d,]+ MB +[\d,]+ GFLOP/step; \d+M parameters", out)
