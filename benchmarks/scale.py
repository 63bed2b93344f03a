"""COCO-scale benchmark: the real main job through DVC on demo worlds of growing size, up to
COCO's 123,287 images, each step timed, its memory and the bytes on disk recorded.

    python benchmarks/scale.py [--images 2000 20000 123287] [--work DIR] [--keep]
    python benchmarks/scale.py --table      # scale.json as a markdown table (and the plot redrawn)
    python benchmarks/scale.py --images 2000 123287 --until train --set model.region_features=detector \
        --results scale_train.json            # only the steps up to train, with a parameter changed

For each size a temporary copy of this project gets a demo world with COCO's split proportions
(5,000 val and 5,000 test images at full size), the demo's params.yaml with one training epoch,
and a git repository; then every step runs as its own process: each stage of the main job through
`dvc repro -s` (world, prepare, the six feature stages, train, evaluate, report), `verify`, a
no-op `dvc repro`, `dvc status`, `dvc push` to a local-folder remote and `dvc pull` into a fresh
git clone. Wall time, peak RSS of the step's whole process tree (sampled every 0.1 s) and bytes
on disk go to benchmarks/results/scale.json; sizes measured by earlier runs are kept, so sizes
can be run one invocation at a time. The log-log plot of seconds against images is redrawn from
the whole file (scale.png). Needs `pip install -e .[bench]` (matplotlib, psutil).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.paper_check import copy_project  # noqa: E402

RESULTS = ROOT / "benchmarks/results"
COCO_IMAGES, COCO_HELD_OUT = 123_287, 5_000  # Karpathy splits: 5,000 val and 5,000 test images
MAIN_JOB = ("weights", "prepare", "clip_image", "regions", "clip_text", "knn", "region_keywords", "region_clip",
            "train", "evaluate", "report", "release")
STAGE = {"region_clip": "optional@region_clip"}  # a step's DVC stage, where the names differ
DISK = ("workspace", "dvc_cache", "remote", "images", "features")  # bytes on disk after the run, by place
GIT = ["git", "-c", "user.name=scale", "-c", "user.email=scale@example.invalid"]


def world_splits(images: int) -> dict[str, int]:
    """COCO's split proportions at ``images`` images (5,000 val and 5,000 test at 123,287)."""
    held_out = max(1, round(images * COCO_HELD_OUT / COCO_IMAGES))
    return {"n_train": images - 2 * held_out, "n_val": held_out, "n_test": held_out}


def run_step(command: list[str], cwd: Path, log_file: Path) -> dict[str, float]:
    """Run ``command``; its wall time and the peak RSS of its process tree (children included)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    started, peak = time.perf_counter(), 0
    with log_file.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            peak = max(peak, _tree_rss(root))
            time.sleep(0.1)
    seconds = time.perf_counter() - started
    if process.returncode:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}) in {cwd}:\n{tail}")
    return {"seconds": seconds, "peak_rss_mb": peak / 2**20}


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        for process in [root, *root.children(recursive=True)]:
            total += process.memory_info().rss
    except psutil.Error:  # a child ended between the listing and the reading
        pass
    return total


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def make_project(project: Path, images: int, changes: dict[str, object]) -> None:
    """A copy of this project with a demo world of ``images`` images, one epoch, the parameters
    ``changes`` names ("section.key" → value), a git repository and a local-folder DVC remote beside it."""
    project.mkdir(parents=True)
    copy_project(project)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["world"].update(world_splits(images))
    params["train"].update(phase1_epochs=0, phase2_epochs=1)  # one epoch, GPT-2 trained too
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        place = params
        for section in sections:
            place = place[section]
        if key not in place:
            raise SystemExit(f"scale: --set {dotted}: no such key in params.yaml")
        place[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "scale benchmark"]):
        subprocess.run(GIT + command, cwd=project, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "remote", "add", "-d", "local",
                    str(project.parent / "remote")], cwd=project, check=True, capture_output=True)


def steps(project: Path, until: str | None = None) -> list[tuple[str, list[str], Path]]:
    """(name, command, folder) of every measured step, in order; with ``until``, the main job's
    steps up to that one (and no checks after it). region_clip only where the parameters extract it."""
    bin_dir = Path(sys.executable).parent
    dvc, clone = str(bin_dir / "dvc"), project.parent / "clone"
    optional = yaml.safe_load((project / "params.yaml").read_text())["store"]["optional_kinds"]
    job = [step for step in MAIN_JOB if step not in STAGE or step in optional]
    job = job[:job.index(until) + 1] if until else job
    main_job = [("world", [dvc, "repro", "-s", "data/dvc.yaml:world"], project),
                *[(step, [dvc, "repro", "-s", STAGE.get(step, step)], project) for step in job]]
    if until:
        return main_job
    return [*main_job,
            ("verify", [str(bin_dir / "graphcap-verify")], project),
            ("noop_repro", [dvc, "repro"], project),
            ("status", [dvc, "status"], project),
            ("push", [dvc, "push"], project),
            ("pull", [dvc, "pull"], clone)]  # in a fresh git clone, made just before


def clone_project(project: Path, clone: Path) -> None:
    """Commit the run (dvc.lock, the remote's config) and clone it, as a collaborator would."""
    subprocess.run(GIT + ["add", "-A"], cwd=project, check=True)
    subprocess.run(GIT + ["commit", "-qm", "scale benchmark: the run"], cwd=project, check=True)
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)


def measure(images: int, work: Path, save: Callable[[dict], object], changes: dict[str, object],
            until: str | None) -> dict:
    """Every step at one size; the project is left in ``work``. ``save`` gets the record after
    each step, so a run cut off at 123k images keeps the steps it finished."""
    project = work / "project"
    make_project(project, images, changes)
    record = {"steps": {}}
    for name, command, cwd in steps(project, until):
        if name == "pull":
            clone_project(project, cwd)
        print(f"[{images} images] {name} ...", flush=True)
        record["steps"][name] = run_step(command, cwd, work / "steps.log")
        print(f"[{images} images] {name}: {record['steps'][name]['seconds']:.1f} s, "
              f"{record['steps'][name]['peak_rss_mb']:.0f} MB", flush=True)
        save(record)
    if until:
        return record
    cache = project / ".dvc/cache"
    record["disk"] = {"workspace": folder_bytes(project) - folder_bytes(cache), "dvc_cache": folder_bytes(cache),
                      "remote": folder_bytes(work / "remote"), "images": folder_bytes(project / "data/world"),
                      "features": folder_bytes(project / "data/features")}
    record["disk_bytes"] = record["disk"]["workspace"] + record["disk"]["dvc_cache"]
    return record


def write_results(runs: dict[int, dict], name: str = "scale.json") -> Path:
    """scale.json in the issue's form (one list entry per size, ascending) plus the disk detail."""
    sizes = sorted(runs)
    names = list(dict.fromkeys(name for size in sizes for name in runs[size]["steps"]))
    table = {
        "sizes": sizes,
        "steps": {name: {key: [runs[size]["steps"].get(name, {}).get(key) for size in sizes]
                         for key in ("seconds", "peak_rss_mb")} for name in names},
        "disk_bytes": [runs[size].get("disk_bytes") for size in sizes],
        "disk_detail": {key: [runs[size].get("disk", {}).get(key) for size in sizes] for key in DISK},
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(table, indent=1) + "\n")
    return path


def load_runs(name: str = "scale.json") -> dict[int, dict]:
    """Sizes measured before, back in the per-size form."""
    path = RESULTS / name
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    return {size: {"steps": {name: {key: values[key][k] for key in values}
                             for name, values in table["steps"].items() if values["seconds"][k] is not None},
                   "disk_bytes": table["disk_bytes"][k],
                   "disk": {key: values[k] for key, values in table["disk_detail"].items() if values[k] is not None}}
            for k, size in enumerate(table["sizes"])}


def slopes(runs: dict[int, dict]) -> dict[str, float]:
    """Log-log slope of each step's seconds between the two largest sizes."""
    small, large = sorted(runs)[-2:]
    return {name: math.log(runs[large]["steps"][name]["seconds"] / runs[small]["steps"][name]["seconds"])
            / math.log(large / small) for name in runs[large]["steps"] if name in runs[small]["steps"]}


def table(runs: dict[int, dict]) -> str:
    """Markdown: each step's seconds and peak RSS at every size, and its slope between the two largest."""
    sizes = sorted(runs)
    slope = slopes(runs) if len(sizes) >= 2 else {}
    head = (["step"] + [f"s @ {size:,}" for size in sizes] + ["slope"]
            + [f"peak RSS MB @ {size:,}" for size in sizes])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(n for size in sizes for n in runs[size]["steps"]):
        cells = [runs[size]["steps"].get(name) for size in sizes]
        lines.append("| " + " | ".join(
            [name] + [f"{c['seconds']:,.1f}" if c else "–" for c in cells]
            + [f"{slope[name]:.2f}" if name in slope else "–"]
            + [f"{c['peak_rss_mb']:,.0f}" if c else "–" for c in cells]) + " |")
    totals = [sum(step["seconds"] for step in runs[size]["steps"].values()) / 60 for size in sizes]
    lines.append("| " + " | ".join(["all steps (min)"] + [f"{t:.1f}" for t in totals] + [""] * (len(sizes) + 1)) + " |")
    return "\n".join(lines)


def plot(runs: dict[int, dict]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(runs)
    figure, axes = plt.subplots(figsize=(9, 6))
    for k, name in enumerate(runs[sizes[-1]]["steps"]):
        points = [(size, runs[size]["steps"][name]["seconds"]) for size in sizes if name in runs[size]["steps"]]
        axes.plot(*zip(*points), marker="os^"[k // 10], linestyle="-" if k < 10 else "--", label=name)  # 10 colours
    axes.plot(sizes, [size / sizes[0] for size in sizes], "k:", label="slope 1 (linear), from 1 s")
    axes.set(xscale="log", yscale="log", xlabel="images", ylabel="seconds (2-core CPU)",
             title="graphcap main job: time of each step against data-set size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    path = RESULTS / "scale.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 20000, COCO_IMAGES])
    parser.add_argument("--work", type=Path, help="where the temporary projects go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep each size's project, remote and clone")
    parser.add_argument("--table", action="store_true", help="print scale.json as a markdown table and redraw the plot; run nothing")
    parser.add_argument("--until", choices=MAIN_JOB, help="measure the main job up to this step only")
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="parameters changed from params.yaml (values read as YAML)")
    parser.add_argument("--results", default="scale.json", help="the results file under benchmarks/results/")
    args = parser.parse_args(argv)
    changes = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    runs = load_runs(args.results)
    if args.table:
        print(table(runs))
        if len(runs) >= 2 and args.results == "scale.json":  # scale.png: the whole main job's plot
            plot(runs)
        return 0
    for images in args.images:
        work = Path(tempfile.mkdtemp(prefix=f"graphcap-scale-{images}-", dir=args.work))
        started = time.perf_counter()
        try:
            runs[images] = measure(images, work, lambda record: write_results({**runs, images: record}, args.results),
                                   changes, args.until)
        except RuntimeError as err:
            print(f"scale: FAILED at {images} images: {err}\n(kept: {work})", file=sys.stderr)
            return 1
        print(f"[{images} images] all steps: {(time.perf_counter() - started) / 60:.1f} min; "
              f"wrote {write_results(runs, args.results)}", flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(runs) >= 2:
        if args.results == "scale.json":
            plot(runs)
        for name, slope in slopes(runs).items():
            print(f"  {name:<16} slope {slope:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
