"""Does a captioner trained on bf16 features caption as well as one trained on fp32 features?
The demo world's main job, run with `dvc repro` in a copy of this project per precision
(`store.precision` fp32 and bf16: every feature stage runs at it), then train + evaluate once per
seed; the test split's metrics per run and mean ± std per precision, printed as a table and saved
to benchmarks/results/precision_seeds.json after every run (a precision's earlier runs there are
replaced, another precision's kept).

    python benchmarks/precision_seeds.py [--seeds 0 1 2] [--precisions fp32 bf16] [--work DIR]

About 45 min on a 2-core CPU without native bf16 (bf16 extraction is emulated there, ~10x slower
than fp32 for the demo's detector; the trainings are fp32 in both arms).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale import GIT, run_step  # noqa: E402
from tools.paper_check import copy_project  # noqa: E402

RESULTS = ROOT / "benchmarks/results/precision_seeds.json"
METRICS = {"BLEU-4": "BLEU-4", "CIDEr": "CIDEr", "object P": "world/object_precision",
           "object R": "world/object_recall", "relation acc": "world/relation_accuracy"}


def make_project(folder: Path, precision: str) -> None:
    """A copy of this project (no run of its own) with ``store.precision`` set, as a git repository."""
    folder.mkdir(parents=True)
    copy_project(folder)
    set_params(folder, store={"precision": precision})
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", f"precision {precision}"]):
        subprocess.run(GIT + command, cwd=folder, check=True)


def set_params(folder: Path, **sections: dict) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_seed(folder: Path, seed: int) -> dict:
    """`dvc repro` at ``train.seed``: features on the first call, then train + evaluate only."""
    set_params(folder, train={"seed": seed})
    step = run_step([str(Path(sys.executable).parent / "dvc"), "repro"], folder, folder.parent / f"{folder.name}.log")
    metrics = json.loads((folder / "results/metrics.json").read_text())
    return {"seed": seed, "minutes": step["seconds"] / 60, **{name: metrics[key] for name, key in METRICS.items()}}


def summary(runs: list[dict]) -> dict[str, str]:
    out = {}
    for name in METRICS:
        values = [r[name] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        out[name] = f"{statistics.mean(values):.3f} ± {spread:.3f}"
    return out


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| features | seed | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]
    for precision, runs in results.items():
        lines += [f"| {precision} | {r['seed']} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |" for r in runs]
        lines.append(f"| **{precision}** | mean ± std | " + " | ".join(summary(runs).values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--work", type=Path, help="where the project copies go (default: a temporary folder)")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="graphcap-precision-", dir=args.work) as tmp:
        for precision in args.precisions:
            folder = Path(tmp) / precision
            make_project(folder, precision)
            results[precision] = []
            for seed in args.seeds:
                results[precision].append(run_seed(folder, seed))
                print(f"[{precision}] seed {seed}: {results[precision][-1]}", flush=True)
                RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
