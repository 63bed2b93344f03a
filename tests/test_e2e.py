"""End to end through the real `dvc repro` on a tiny world, in a temporary copy of the project."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DVC = Path(sys.executable).parent / "dvc"
MAIN_JOB = {"world", "weights", "prepare", "clip_image", "regions", "clip_text", "knn", "region_keywords",
            "optional@region_clip", "train", "evaluate", "report", "release"}


def _project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _dvc(project: Path, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="2", PATH=f"{DVC.parent}:{os.environ['PATH']}")
    result = subprocess.run([str(DVC), *args], cwd=project, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@/.:-]+)'", output))


def _stage(name: str) -> str:
    """How DVC names a stage in its output: with its dvc.yaml when that is not the root one."""
    if name == "world":
        return "data/dvc.yaml:world"
    return name


def _set(project: Path, updates: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in updates.items():
        *parents, key = dotted.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def first_repro(tmp_path_factory) -> tuple[Path, str]:
    """The tiny project after its first `dvc repro`, and what that printed (each test below can
    run alone)."""
    if not DVC.exists():
        pytest.skip(f"dvc is not installed next to {sys.executable}")
    project = _make_project(tmp_path_factory.mktemp("project"))
    return project, _dvc(project, "repro")


@pytest.fixture(scope="module")
def project(first_repro) -> Path:
    return first_repro[0]


def _make_project(project: Path) -> Path:
    """A copy of this checkout, as git has it, shrunk to a 36-image world, committed."""
    for name in _project_files():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    for generated in ("dvc.lock", "data/dvc.lock", "studies/dvc.lock", "studies/results", "results", "dvclive"):
        shutil.rmtree(project / generated, ignore_errors=True) if (project / generated).is_dir() else (
            project / generated).unlink(missing_ok=True)
    _set(project, {"world.n_train": 24, "world.n_val": 6, "world.n_test": 6, "store.shard_size": 16,
                   "store.num_workers": 0, "train.phase1_epochs": 1, "train.phase2_epochs": 1,
                   "train.val_images": 0, "train.batch_size": 32, "evaluate.decode.beam_size": 2,
                   "ablation.variants": ["baseline"], "ablation.seeds": [0],
                   "ablation.phase1_epochs": 1, "ablation.phase2_epochs": 1})
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tiny world"]):  # dvclive wants a commit
        subprocess.run(git + command, cwd=project, check=True)
    return project


def test_paper_preset_lists_only_the_main_job(tmp_path):
    """Under a real data set's params the world generator and the studies are not in `dvc repro`'s
    pipeline: `dvc stage list` shows the main job alone, and without region_clip, which the
    paper's model does not read."""
    if not DVC.exists():
        pytest.skip(f"dvc is not installed next to {sys.executable}")
    paper = _make_project(tmp_path / "paper")
    shutil.copy(ROOT / "presets/paper.yaml", paper / "params.yaml")
    listed = {line.split()[0] for line in _dvc(paper, "stage", "list").splitlines() if line.strip()}
    assert listed == MAIN_JOB - {"world", "optional@region_clip"}
    # offline, with the hub names the preset gives and nothing cached: `make repro`'s check names
    # every missing input in one line, before DVC runs (which would fail on the absent detector
    # file in its own words); `dvc repro` itself stops at the weights stage with the same line and
    # keeps what weights/ held
    env = dict(os.environ, PATH=f"{DVC.parent}:{os.environ['PATH']}", HF_HUB_CACHE=str(tmp_path / "empty_hub"),
               HF_HUB_OFFLINE="1", PYTHONPATH=str(paper))
    check = subprocess.run([sys.executable, "-m", "pipeline.stages.weights", "--check"], cwd=paper,
                           capture_output=True, text=True, env=env)
    (line,) = check.stderr.splitlines()
    assert check.returncode == 2 and line.startswith("stage weights: MissingWeights: 3 pretrained input(s) missing: ")
    for key in ("clip.pretrained: 'openai' (ViT-B-32) is not in the hub's local cache", "regions.weights: ",
                "model.gpt2: 'gpt2' is not a local folder nor in the hub's local cache"):
        assert key in line, key
    (paper / "pretrained").mkdir()
    (paper / "pretrained/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth").write_bytes(b"a stand-in: never loaded")
    (paper / "weights").mkdir()
    (paper / "weights/sources.json").write_text("{}")  # what an earlier run resolved
    run = subprocess.run([str(DVC), "repro", "weights"], cwd=paper, capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "Traceback" not in run.stdout + run.stderr
    assert "stage weights: MissingWeights: 2 pretrained input(s) missing: clip.pretrained: 'openai'" in (
        run.stdout + run.stderr) and "hf download gpt2" in run.stdout + run.stderr
    assert (paper / "weights/sources.json").read_text() == "{}"


def test_repro_runs_every_stage_and_writes_metrics(first_repro):
    project, output = first_repro
    assert _stages_run(output) == {_stage(name) for name in MAIN_JOB}  # and no study
    metrics = json.loads((project / "results/metrics.json").read_text())
    for name in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert 0 <= metrics[name] < 10
    assert metrics["n_images"] == 6 and "SPICE" in metrics
    captions = json.loads((project / "results/captions.json").read_text())
    assert len(captions) == 6 and all(isinstance(c["caption"], str) for c in captions)
    dataset = json.loads((project / "data/world/dataset.json").read_text())["images"]
    raw = {str(e["imgid"]): [s["raw"] for s in e["sentences"]] for e in dataset}
    assert all(c["references"] == raw[c["id"]] for c in captions)  # scored against the raw text, as COCO's server
    _load_coco_results(project / "results/coco_results.json", captions)
    assert (project / "models/captioner/config.json").exists()
    assert sorted(p.name for p in (project / "data/features/regions").iterdir()) == [
        "rejects.json", "shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert json.loads((project / "data/features/regions/rejects.json").read_text()) == []
    table = _dvc(project, "metrics", "show").splitlines()
    header = table[0].split()
    assert "CIDEr" in header and "world/object_recall" in header and "BLEU-1" not in header
    assert max(map(len, table)) <= 200, table  # fits a terminal; every figure: `dvc metrics show results/metrics.json`
    assert not (project / "studies/results").exists()
    page = (project / "results/report/index.html").read_text()
    assert page.count("<section") == 6 and len(list((project / "results/report/images").glob("*.png"))) == 6


def test_the_release_loads_offline_and_captions_as_evaluate_did(project, monkeypatch):
    """models/release: the model with its model card; Captioner.from_pretrained reads it (no
    network) and decodes the test images as the evaluate stage did."""
    import torch

    from corpus.datasets import scorable
    from pipeline.app import load_manifest
    from pipeline.model_inputs import open_features, split_indices
    from pipeline.params import load_params
    from train.data import Images
    from train.decode import caption_images
    from train.model import Captioner

    monkeypatch.chdir(project)
    card = (project / "models/release/README.md").read_text()
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert "library_name: graphcap" in card and f"| CIDEr | {metrics['CIDEr']:.4f} |" in card
    params = load_params(project / "params.yaml")
    model = Captioner.from_pretrained(project / "models/release")
    manifest = load_manifest()
    features = open_features(params, manifest, with_region_clip=model.cfg.reads_region_clip)
    images = Images(features, split_indices(manifest, params.evaluate.split, features))
    captions = caption_images(model, images, params.evaluate.decode, params.evaluate.batch_size, torch.device("cpu"))
    evaluated = json.loads((project / "results/captions.json").read_text())
    assert [scorable(c) for c in captions] == [r["caption"] for r in evaluated]


def _load_coco_results(path, captions):
    """The result file loads with pycocotools against ground truth of the same images, as COCO's
    own evaluation code does, and says what captions.json says."""
    from pycocotools.coco import COCO

    truth = COCO()
    references = [(c["id"], r) for c in captions for r in c["references"]]
    truth.dataset = {"images": [{"id": int(c["id"])} for c in captions],
                     "annotations": [{"id": k, "image_id": int(i), "caption": r} for k, (i, r) in enumerate(references)]}
    truth.createIndex()
    results = truth.loadRes(str(path))
    assert {a["image_id"]: a["caption"] for a in results.dataset["annotations"]} == {
        int(c["id"]): c["caption"] for c in captions}


def test_second_repro_does_nothing(project):
    assert _stages_run(_dvc(project, "repro")) == set()


def test_flipped_bytes_in_a_shard_are_named_then_recomputed_not_adopted(project):
    """The disk damages a stored shard: graphcap-verify names it, and `dvc repro` (which sees the
    output changed) recomputes it byte for byte instead of adopting it into dvc.lock."""
    import h5py

    lock = _lock_outputs(project)
    shard = project / "data/features/clip_image/shard-00000.h5"
    clean = shard.read_bytes()
    with h5py.File(shard, "r") as f:
        offset = f["embeddings"].id.get_chunk_info(0).byte_offset  # inside the embeddings' first chunk
    damaged = bytearray(clean)
    damaged[offset + 8:offset + 24] = bytes(b ^ 0xFF for b in damaged[offset + 8:offset + 24])
    shard.write_bytes(bytes(damaged))
    verify = subprocess.run([sys.executable, "-m", "pipeline.verify"], cwd=project, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(project)))
    assert verify.returncode == 1 and f"{shard.relative_to(project)}: 'embeddings' is damaged" in verify.stdout
    assert _stages_run(_dvc(project, "repro")) == {"clip_image"}  # its output hash is back: nothing after it reruns
    assert shard.read_bytes() == clean and _lock_outputs(project) == lock


def _lock_outputs(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {out["path"]: out.get("md5", "") for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _kill_during(project: Path, stage: str, delay: float) -> bool:
    """Start `dvc repro`, SIGKILL it with its stage process ``delay`` s after ``stage`` starts.
    False if the run ended before that (the stage was already done)."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1", PATH=f"{DVC.parent}:{os.environ['PATH']}")
    run = subprocess.Popen([str(DVC), "repro"], cwd=project, env=env, start_new_session=True, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in run.stdout:
        if f"Running stage '{_stage(stage)}'" in line:
            time.sleep(delay)
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
            return True
    run.wait()
    return False


@pytest.mark.slow  # ~2.6 min: six killed `dvc repro` runs and a full one (`make test-slow`)
def test_killed_repros_end_where_an_uninterrupted_one_ends(project, tmp_path):
    """SIGKILL `dvc repro` (with its stage) inside every stage in turn, at different moments
    (starting up, computing, writing), rerun it, and compare every output hash with the
    uninterrupted run: shards, model, metrics and report are byte for byte the same, so no
    partial file was kept or read."""
    killed = _make_project(tmp_path / "killed")
    # feature stages at two moments, training mid-epoch (its checkpoint), then the stages after it
    delays = {"world": 1.0, "regions": 4.0, "knn": 2.5, "train": 9.0, "evaluate": 4.0, "report": 2.5}
    kills = [_kill_during(killed, stage, delay) for stage, delay in delays.items()]
    assert sum(kills) >= len(delays) - 2  # nearly every one was really interrupted
    _dvc(killed, "repro")
    assert _lock_outputs(killed) == _lock_outputs(project)


def test_pushed_features_pulled_into_a_clone_need_no_recompute(project, tmp_path):
    """docs/pipeline.md's recipe as two people follow it: the remote committed in .dvc/config, a
    clone pulls with no remote named. The remote's name is the test's own and `-f` replaces one
    of that name: a remote the user added to their checkout (copied with it) never gets in the way."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    _dvc(project, "remote", "add", "-f", "-d", "graphcap-test-share", str(tmp_path / "remote"))
    subprocess.run(git + ["add", "-A"], cwd=project, check=True)  # .dvc/config and dvc.lock among them
    subprocess.run(git + ["commit", "-qm", "features made"], cwd=project, check=True)
    _dvc(project, "push")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    assert not (clone / "data/features/regions").exists()
    _dvc(clone, "pull")
    assert len(list((clone / "data/features/regions").glob("shard-*.h5"))) == 3
    assert _stages_run(_dvc(clone, "repro")) == set()


def test_a_bad_parameter_fails_its_stage_in_one_line_and_deletes_no_result(project):
    """A typo in a key only `train` reads: the stage stops with one line, and results/train.json
    (a metric DVC would delete before running the stage) is still there, so fixing the typo
    retrains nothing."""
    scores = (project / "results/train.json").read_text()
    _set(project, {"train.lr": "fast"})
    env = dict(os.environ, PATH=f"{DVC.parent}:{os.environ['PATH']}")
    run = subprocess.run([str(DVC), "repro"], cwd=project, capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "Traceback" not in run.stdout + run.stderr
    assert "stage train: ParamsError: params.yaml: params.train.lr: expected float, got str 'fast'" in run.stdout + run.stderr
    assert (project / "results/train.json").read_text() == scores
    _set(project, {"train.lr": yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr"]})
    assert _stages_run(_dvc(project, "repro")) == set()


def test_parameters_rerun_only_what_depends_on_them(project):
    _set(project, {"train.lr": 0.002})
    assert _stages_run(_dvc(project, "repro")) == {"train", "evaluate", "report", "release"}
    _set(project, {"knn.k": 3})
    assert _stages_run(_dvc(project, "repro")) == {"knn", "train", "evaluate", "report", "release"}


@pytest.mark.slow  # ~1 min beside the e2e project's: `make test-slow` keeps `make test` under 10 min
def test_studies_run_apart_and_rerun_only_new_cells(project):
    studies = project / "studies"  # a DVC project of its own: the root's status never lists a cell
    assert "ablation" not in _dvc(project, "status")
    assert _stages_run(_dvc(studies, "repro")) == {"ablation_check", "ablation@baseline-0", "ablation_table"}
    table = (studies / "results/ablations.md").read_text().splitlines()
    assert table[0].startswith("| model | seeds | BLEU-4") and len(table) == 3  # header, rule, one row
    assert "Baseline" in table[2] and "±" in table[2]
    assert "CIDEr" in _dvc(studies, "metrics", "show", "results/ablations.json")
    _set(project, {"ablation.seeds": [0, 1]})  # one more seed: only its cell and the table
    assert _stages_run(_dvc(studies, "repro")) == {"ablation@baseline-1", "ablation_table"}
    assert _stages_run(_dvc(project, "repro")) == set()  # the main job is untouched by the studies
