"""`make paper-check`: the real main job (`dvc repro`: prepare → features → train → evaluate →
report) at the paper's sizes, on real photos, in a temporary copy of this project.

    python -m tools.paper_check [--real-sample DIR] [--keep]

presets/paper.yaml is used as it is but for three things: the weights (open_clip ViT-B-32,
torchvision fasterrcnn_resnet50_fpn and GPT-2 small, 124M, built here with random weights and saved
as local files: no hub is reached), the data set (the 48 real photos of ``real_sample`` with their
human captions, given a fixed train / val / test split) and the schedule (one epoch). Random
weights make the captions meaningless: what this proves is that the paper-size path runs end to
end on real photos — every image size and format, images with 0 or 1 detected region — and
leaves results/metrics.json and the report; then the released model captions three of the photos
beside an empty and a non-image file with `graphcap-caption`, as a user captions new photos (each
photo gets a caption, each bad file a reason; its time and peak memory are printed). Exits
non-zero, with the log's tail, if any of it fails.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SPLIT = {"train": 32, "val": 8, "test": 8}  # of the 48 photos, in the order of their dataset.json
EPOCHS = {"phase1_epochs": 0, "phase2_epochs": 1}  # one epoch, GPT-2 training too (phase 2)
RESULTS = ("results/metrics.json", "results/captions.json", "results/report/index.html")
CAPTIONED = 3  # test photos captioned with graphcap-caption and the released model after the run
# Peak disk of one run (CPU, measured: 5.6 GB left at the end — random weights as built, as
# resolved by the weights stage and in DVC's cache; the trained and released model and its cache
# copy — plus the 0.6 GB training checkpoint while train runs), with a margin
DISK_NEEDED = 8 * 2**30


def find_real_sample() -> Path | None:
    """The shared folder of 48 real photos (never copied into the project): where
    GRAPHCAP_REAL_SAMPLE points, else ../shared beside the checkout (no machine's absolute path)."""
    candidates = [os.environ.get("GRAPHCAP_REAL_SAMPLE", ""), ROOT.parent / "shared/data/real_sample"]
    return next((Path(c) for c in candidates if c and (Path(c) / "dataset.json").is_file()), None)


def copy_project(dest: Path) -> None:
    """The files git knows (committed or not, ignored ones left out), without the demo's run."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file() and not name.startswith(("results/", "dvclive/")) and not name.endswith("dvc.lock"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def write_dataset(sample: Path, dest: Path) -> list[str]:
    """The sample's Karpathy JSON with its photos split by SPLIT, its images beside it; returns
    the captions of the training split (for the tokenizer)."""
    data = json.loads((sample / "dataset.json").read_text())
    splits = [name for name, n in SPLIT.items() for _ in range(n)]
    if len(data["images"]) != len(splits):
        raise ValueError(f"{sample / 'dataset.json'}: expected {len(splits)} images, found {len(data['images'])}")
    for entry, split in zip(data["images"], splits):
        entry["split"] = split
    dest.mkdir(parents=True)
    shutil.copytree(sample / "images", dest / "images")  # into the temporary copy only
    (dest / "dataset.json").write_text(json.dumps(data))
    return [s["raw"] for e in data["images"] if e["split"] == "train" for s in e["sentences"]]


def build_weights(folder: Path, captions: list[str]) -> dict[str, str]:
    """The paper's three networks at their real sizes with random weights, saved locally."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from transformers import GPT2Config, GPT2LMHeadModel

    from tools.demo_encoders.language import train_tokenizer

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(open_clip.create_model("ViT-B-32").state_dict(), str(folder / "vit-b-32.safetensors"))
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), folder / "r50fpn.pth")
    # GPT-2 small (124M: 12 layers, 768 wide, 50,257-token vocabulary, 1,024 positions); GPT-2's
    # own BPE files come from the hub, so a byte-level BPE is trained on the captions instead
    tokenizer = train_tokenizer(captions, vocab_size=2000)
    config = GPT2Config(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    tokenizer.save_pretrained(folder / "gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder / "gpt2")
    return {"clip": str(folder / "vit-b-32.safetensors"), "detector": str(folder / "r50fpn.pth"),
            "gpt2": str(folder / "gpt2")}


def write_params(project: Path, weights: dict[str, str], data: Path) -> None:
    import torch

    from features.precision import native_bf16

    params = yaml.safe_load((ROOT / "presets/paper.yaml").read_text())
    params["clip"]["pretrained"] = weights["clip"]
    params["regions"]["weights"] = weights["detector"]
    params["model"]["gpt2"] = weights["gpt2"]
    params["data"].update(dataset=str(data.relative_to(project) / "dataset.json"),
                          image_root=str(data.relative_to(project) / "images"))  # filepath: a folder under images/
    params["train"].update(EPOCHS)
    if params["train"]["precision"] == "bf16" and not native_bf16("cuda" if torch.cuda.is_available() else "cpu"):
        # emulated bf16 (features.precision.native_bf16) trained ~7x slower than fp32 and dominated this check's time
        log.warning("paper-check: this CPU has no native bf16 (no AVX512-BF16/AMX) and no GPU: training in fp32")
        params["train"]["precision"] = "fp32"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_repro(project: Path, log_file: Path) -> dict[str, float]:
    """`dvc repro` in ``project``, streamed to ``log_file``; returns seconds per stage."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    times: dict[str, float] = {}
    stage, since = None, time.perf_counter()
    with log_file.open("w") as out:
        run = subprocess.Popen([str(bin_dir / "dvc"), "repro"], cwd=project, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in run.stdout:
            out.write(line)
            out.flush()
            if line.startswith("Running stage '"):
                now = time.perf_counter()
                if stage:
                    times[stage] = now - since
                stage, since = line.split("'")[1], now
        code = run.wait()
    if stage:
        times[stage] = time.perf_counter() - since
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"dvc repro failed (exit {code}); the last lines of its log:\n{tail}")
    return times


def caption_new_photos(project: Path, photos: list[Path]) -> dict[str, float]:
    """`graphcap-caption` with the released model on ``photos`` plus an empty and a non-image file:
    a caption per photo, a reason per bad file. Returns its seconds and peak RSS (GB)."""
    bad = [project / "empty.jpg", project / "not-an-image.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_text("a caption, not a photo\n")
    started = time.perf_counter()
    with (project / "caption.out").open("w") as out_file, (project / "caption.err").open("w") as err_file:
        run = subprocess.Popen([sys.executable, "-m", "pipeline.caption", "--model", "models/release", "--jsonl",
                                *map(str, photos + bad)], cwd=project, stdout=out_file, stderr=err_file)
        _, status, usage = os.wait4(run.pid, 0)  # this child's own peak memory, not the stages'
    run.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    out, err = (project / "caption.out").read_text(), (project / "caption.err").read_text()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    captioned = [r for r in records if r.get("caption", "").strip()]
    refused = [r for r in records if r.get("error") and Path(r["file"]).name in {f.name for f in bad}]
    if run.returncode != 1 or len(captioned) != len(photos) or len(refused) != len(bad):
        raise RuntimeError(f"graphcap-caption (exit {run.returncode}) captioned {len(captioned)} of "
                           f"{len(photos)} photos and refused {len(refused)} of {len(bad)} bad files:\n"
                           f"{out}{err[-2000:]}")
    return {"seconds": seconds, "peak_rss_gb": usage.ru_maxrss / 2**20}  # ru_maxrss: KiB on Linux


def check(project: Path, sample: Path, keep: bool) -> dict:
    started = time.perf_counter()
    copy_project(project)
    captions = write_dataset(sample, project / "data/real_sample")
    write_params(project, build_weights(project / "pretrained", captions), project / "data/real_sample")
    git = ["git", "-c", "user.name=paper-check", "-c", "user.email=paper-check@example.invalid"]
    for command in (["init", "-q"], ["add", "-A", "--", ".", ":!data"], ["commit", "-qm", "paper check"]):
        subprocess.run(git + command, cwd=project, check=True)  # dvclive wants a commit; pretrained/ is git-ignored
    prepared = time.perf_counter() - started
    stages = run_repro(project, project / "repro.log")
    missing = [name for name in RESULTS if not (project / name).is_file()]
    if missing:
        raise RuntimeError(f"dvc repro left no {', '.join(missing)} in {project}")
    metrics = json.loads((project / "results/metrics.json").read_text())
    data = project / "data/real_sample"
    tests = [e for e in json.loads((data / "dataset.json").read_text())["images"] if e["split"] == "test"]
    captioning = caption_new_photos(project, [data / "images" / e["filepath"] / e["filename"] for e in tests[:CAPTIONED]])
    return {"project": str(project) if keep else None, "prepare_s": prepared, "stages_s": stages,
            "total_s": time.perf_counter() - started, "test_images": metrics["n_images"],
            "CIDEr": metrics["CIDEr"], "caption": captioning}


def _after_failure(work: Path, keep: bool) -> str:
    """Keeps the failed project with --keep; otherwise only its log, so that failed runs do not
    fill the disk (one run leaves gigabytes of weights and models)."""
    project = work / "project"
    if keep:
        return f"(the project is kept for inspection: {project})"
    log_file = project / "repro.log"
    if log_file.is_file():
        shutil.move(log_file, work / "repro.log")
    shutil.rmtree(project, ignore_errors=True)
    kept = f"its log is kept: {work / 'repro.log'}; " if (work / "repro.log").is_file() else ""
    return f"({kept}rerun with --keep to keep the whole project)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-sample", type=Path,
                        help="the folder of real photos (default: found as the tests find it)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary project for inspection (by default a failed run keeps only its log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sample = args.real_sample or find_real_sample()
    if sample is None or not (sample / "dataset.json").is_file():
        print("paper-check: no real_sample folder (set GRAPHCAP_REAL_SAMPLE to the folder holding dataset.json "
              "and images/)", file=sys.stderr)
        return 2
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < DISK_NEEDED:
        print(f"paper-check: {tempfile.gettempdir()} has {free / 2**30:.1f} GB free, a run needs "
              f"{DISK_NEEDED / 2**30:.0f} GB (set TMPDIR to a folder on a larger disk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="graphcap-paper-check-"))
    try:
        summary = check(work / "project", sample, args.keep)
    except (RuntimeError, ValueError, OSError, subprocess.CalledProcessError) as err:
        print(f"paper-check: FAILED: {err}\n{_after_failure(work, args.keep)}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    for stage, seconds in summary["stages_s"].items():
        print(f"  {stage:<16}{seconds:8.1f} s")
    print(f"  graphcap-caption, {CAPTIONED} photos and 2 bad files: {summary['caption']['seconds']:.1f} s, "
          f"peak RSS {summary['caption']['peak_rss_gb']:.2f} GB")
    kept = f"; kept in {summary['project']}" if args.keep else ""
    print(f"paper-check: passed in {summary['total_s'] / 60:.1f} min (CPU; weights and copy "
          f"{summary['prepare_s']:.0f} s), {summary['test_images']} test images evaluated{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
