import re

import pytest

from pipeline.params import ParamsError, load_params
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["params.yaml", "presets/paper.yaml"])
def test_shipped_parameter_files_validate(name):
    params = load_params(ROOT / name)
    assert params.knn.k == 5


def test_paper_preset_holds_the_papers_settings():
    p = load_params(ROOT / "presets/paper.yaml")
    assert (p.clip.model, p.clip.pretrained, p.model.gpt2) == ("ViT-B-32", "openai", "gpt2")
    assert (p.train.lr, p.train.lr_decay, p.train.batch_size, p.train.phase1_epochs + p.train.phase2_epochs) == (
        1e-4, 0.9, 64, 30)
    assert (p.train.loss.alpha_align, p.train.loss.alpha_gate) == (0.7, 0.3)
    assert (p.evaluate.decode.method, p.evaluate.decode.beam_size) == ("hybrid", 5)
    assert (p.regions.roi_output_size, p.regions.rpn_post_nms_top_n_test) == (7, 100)


def _write(tmp_path, old, new):
    """params.yaml with the first line starting ``old`` (its comment too) replaced by ``new``'s lines."""
    text = (ROOT / "params.yaml").read_text()
    line = re.search(rf"(?m)^{re.escape(old)}(?![\w.]).*\n", text)
    assert line, old
    path = tmp_path / "params.yaml"
    path.write_text(text[:line.start()] + (new + "\n" if new else "") + text[line.end():])
    return path


@pytest.mark.parametrize("old, new, message", [
    ("  k: 5", "  k: 5\n  kk: 3", r"knn\.kk: unknown key"),
    ("  k: 5", "", r"knn\.k: missing"),  # never silently the dataclass's default
    ("  local_source: labels", "  local_source: labelz",  # a choice is checked at start, not when first used
     r"keywords\.local_source: 'labelz' is not one of labels \| retrieval"),
])
def test_a_bad_key_is_named(tmp_path, old, new, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, old, new))


def test_wrong_type_is_named(tmp_path):
    path = _write(tmp_path, "  k: 5", "  k: five")
    with pytest.raises(ParamsError, match=r"knn\.k: expected int"):
        load_params(path)
    path = _write(tmp_path, "  gat: true", "  gat: 1")
    with pytest.raises(ParamsError, match=r"model\.gat: expected bool"):
        load_params(path)


def test_missing_section_is_named(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    start = text.index("\nknn:")
    end = text.index("\nmodel:")
    path = tmp_path / "params.yaml"
    path.write_text(text[:start] + text[end:])
    with pytest.raises(ParamsError, match="knn"):
        load_params(path)



@pytest.mark.parametrize("name", ["params.yaml", "presets/paper.yaml"])
def test_an_override_as_dvc_exp_run_writes_it_changes_only_its_line(name, tmp_path):
    """`dvc exp run -S train.lr=…` rewrites the whole params file through DVC's YAML writer: the
    files are kept in the form that writer gives them, so the override is the diff's one line."""
    import difflib
    import shutil

    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls on each params file

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / name, copy)
    before = copy.read_text().splitlines()
    apply_overrides(copy, ["train.lr=0.12345"])
    changed = [line for line in difflib.unified_diff(before, copy.read_text().splitlines(), lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert len(changed) == 2 and changed[0].startswith("-  lr: ") and changed[1].split("#")[0].rstrip() == "+  lr: 0.12345", \
        changed
