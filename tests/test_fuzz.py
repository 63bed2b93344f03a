"""Fuzzed user inputs end in a result or in the one line of error that `run_command` prints,
never in a traceback or a hang: params files, Karpathy data-set JSONs and model folders, each
mutated from a valid one. Derandomized, so CI sees the same cases."""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import operator
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from corpus.datasets import SplitConfig, TextConfig, build_manifest
from pipeline import verify
from pipeline.app import one_line
from pipeline.params import Params, ParamsError, load_params
from tests.helpers import tiny_captioner
from train.model import load_captioner

ROOT = Path(__file__).resolve().parents[1]
CASES = {"params": 400, "verify": 20, "dataset": 400, "model": 200}
TOTAL_CASES = sum(CASES.values())  # docs/testing.md quotes it


def fuzz(target: str):
    """A fixed number of reproducible examples; no example database (failures are not replayed)
    and no shrinking (minutes; a failure prints its unshrunk input, the files as written)."""
    return settings(max_examples=CASES[target], deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def assert_one_line(err: BaseException, names: str) -> None:
    """What run_command would print is one non-empty line naming ``names`` (a file or folder)."""
    line = one_line(err)
    assert str(err).strip() and len(line.splitlines()) == 1, line
    assert names in str(err), line


# ---- random edits of a parsed YAML/JSON tree and of a file's bytes ----

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=5)
BOUNDARY = st.sampled_from([0, -1, 2**64, 10**100, "", " ", "é" * 5000, 1e308, -0.0, float("nan"),
                            float("inf")])
KEYS = st.text(max_size=10) | st.integers() | st.none() | st.booleans()  # YAML keys may be any scalar


def _spots(tree, at=()):
    """(path of keys, value) of every spot below the root of a tree of dicts and lists."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield at + (key,), value
        yield from _spots(value, at + (key,))


def _at(tree, at):
    return functools.reduce(operator.getitem, at, tree)


def mutate_tree(data, tree):
    """One edit at a random spot: delete it, add unknown keys to a mapping, duplicate a list item,
    replace it by a boundary value or by a random value of any type. Returns the (new) tree."""
    edit = data.draw(st.sampled_from(["delete", "add", "duplicate", "boundary", "replace"]))
    spots = [()] if edit == "add" else []  # the root takes keys too; other edits need a parent
    spots += [at for at, value in _spots(tree) if edit != "add" or isinstance(value, dict)]
    if edit == "duplicate":
        spots = [at for at in spots if isinstance(_at(tree, at[:-1]), list)] or spots
    if not spots or not isinstance(tree, (dict, list)):
        return data.draw(VALUES)
    at = data.draw(st.sampled_from(spots))
    if edit == "add":
        _at(tree, at).update(data.draw(st.dictionaries(KEYS, VALUES, min_size=1, max_size=2)))
        return tree
    parent, key = _at(tree, at[:-1]), at[-1]
    if edit == "delete":
        del parent[key]
    elif edit == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = data.draw(BOUNDARY if edit == "boundary" else VALUES)
    return tree


def mutate_bytes(data, raw: bytes) -> bytes:
    """Cut at an offset, insert junk (bytes or text) or nesting deeper than a parser's recursion
    limit, duplicate a line, or leave as it is."""
    edit = data.draw(st.sampled_from(["keep", "cut", "insert", "line"] * 3 + ["deep"]))  # deep: ~1 s a case
    at = data.draw(st.integers(0, len(raw)))
    if edit == "cut":
        return raw[:at]
    if edit == "deep":
        return raw[:at] + b"[" * sys.getrecursionlimit() + raw[at:]  # hypothesis raises the limit
    if edit == "insert":
        junk = data.draw(st.binary(min_size=1, max_size=8) | st.text(min_size=1, max_size=8).map(str.encode))
        return raw[:at] + junk + raw[at:]
    if edit == "line" and raw:
        lines = raw.splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[:i + 1] + lines[i:])
    return raw


def mutated_file(data, tree, dump, path: Path, text: str | None = None) -> None:
    """``path`` written with 0-3 tree edits of ``tree`` (none: ``text``, the file as a user
    wrote it, comments and all), then maybe a byte edit."""
    edits, tree = data.draw(st.integers(0, 3)), copy.deepcopy(tree)
    for _ in range(edits):
        tree = mutate_tree(data, tree)
    raw = mutate_bytes(data, (dump(tree) if edits or text is None else text).encode())
    note(f"{path.name}: {raw[:20_000]!r}")
    path.write_bytes(raw)


# ---- 1. params files ----

PARAMS_TEXT = (ROOT / "params.yaml").read_text()
PARAMS = yaml.safe_load(PARAMS_TEXT)


def yaml_dump(tree) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)


@fuzz("params")
@given(data=st.data())
def test_a_params_file_loads_or_is_one_line_naming_it(data, tmp_path):
    path = tmp_path / "params.yaml"
    mutated_file(data, PARAMS, yaml_dump, path, PARAMS_TEXT)
    try:
        assert isinstance(load_params(path), Params)
    except ParamsError as err:
        assert_one_line(err, str(path))


@fuzz("verify")
@given(data=st.data())
def test_graphcap_verify_on_a_bad_params_file_is_one_line_and_exit_2(data, tmp_path):
    path = tmp_path / "params.yaml"
    mutated_file(data, PARAMS, yaml_dump, path, PARAMS_TEXT)
    with contextlib.suppress(Exception):  # any error: verify must make it its one line
        load_params(path)
        assume(False)  # a valid file: verify would go on to the (absent) store
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verify.main(["--params", str(path)])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("graphcap-verify: "), err.getvalue()


# ---- 2. Karpathy data-set JSONs, read as the prepare stage reads them ----

def _entry(i: int, split: str) -> dict:
    return {"filepath": "imgs", "filename": f"{i}.png", "imgid": i, "cocoid": 100 + i, "split": split,
            "sentences": [{"raw": "A red circle.", "tokens": ["a", "red", "circle"]},
                          {"raw": "Ünïcode 2 shapes!", "tokens": ["unicode", "2", "shapes"]}]}


DATASET = {"dataset": "toy", "images": [_entry(0, "train"), _entry(1, "restval"), _entry(2, "val"),
                                        _entry(3, "test")]}
SPLIT_RULES = st.builds(SplitConfig, rule=st.sampled_from(["karpathy", "coco2014", "random"]),
                        val_images=st.integers(0, 3))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Real image files for the entries (prepare hashes each file it keeps)."""
    root = tmp_path_factory.mktemp("images")
    (root / "imgs").mkdir()
    for i in range(len(DATASET["images"])):
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(root / "imgs" / f"{i}.png")
    return root


@fuzz("dataset")
@given(data=st.data())
def test_a_dataset_json_reads_or_is_one_line(data, image_root, tmp_path):
    path = tmp_path / "dataset.json"
    mutated_file(data, DATASET, json.dumps, path)
    split = data.draw(SPLIT_RULES)
    try:
        manifest = build_manifest(path, image_root, TextConfig(), data.draw(st.integers(0, 5)), 1000, split)
        assert isinstance(manifest["images"], list)
    except (ValueError, OSError) as err:  # an OSError may name its own file (an image's) instead
        assert_one_line(err, str(getattr(err, "filename", None) or path))


# ---- 3. model folders ----

@pytest.fixture(scope="module")
def model_folder(tiny_language, tmp_path_factory) -> Path:
    """One saved captioner (a tiny GPT-2 inside), copied and damaged by each example."""
    folder = tmp_path_factory.mktemp("model") / "captioner"
    tiny_captioner(tiny_language).eval().save(folder)
    return folder


def damage(data, path: Path) -> None:
    """A JSON file: tree edits (half the time); any file: removed, emptied, cut, junk, a pickle."""
    raw = path.read_bytes()
    if path.suffix == ".json" and data.draw(st.booleans()):
        return mutated_file(data, json.loads(raw), json.dumps, path)
    edit = data.draw(st.sampled_from(["remove", "empty", "cut", "junk", "pickle"]))
    if edit == "remove":
        return path.unlink()
    path.write_bytes({"empty": b"", "cut": raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)))],
                      "junk": data.draw(st.binary(max_size=64)), "pickle": pickle.dumps({"w": [1.0]})}[edit])


@fuzz("model")
@given(data=st.data())
def test_a_model_folder_loads_or_is_one_line_naming_it(data, model_folder):
    files = sorted(p.relative_to(model_folder) for p in model_folder.rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "captioner"
        shutil.copytree(model_folder, folder)
        for name in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=2, unique=True)):
            note(f"damaged: {name}")
            damage(data, folder / name)
        try:
            load_captioner(folder)
        except (ValueError, OSError) as err:
            assert_one_line(err, str(folder))

