"""Each parameter is documented once, at its config dataclass field: params.yaml and the paper
preset are rendered from the fields (tools/presets.py), the preset's source holds only what it
changes, and every key a message, comment, doc or preset names exists."""
import io
import re
import tokenize

import pytest

from pipeline.params import load_params
from pipeline.provenance import expected
from tests.conftest import ROOT
from tests.helpers import project_files
from tests.test_layering import MODULES
from tools import presets

KEYS = presets.schema()
SECTIONS = sorted(k for k in KEYS if "." not in k)
# a dotted name starting with a section, not inside a path, a file name, a glob or a call
NAMED = re.compile(r"(?<![\w/.\-])(" + "|".join(SECTIONS) + r")((?:\.[a-z_][a-z0-9_]*)+)(?![\w/(*-])")
FILE_SUFFIXES = {"py", "h5", "json", "yaml", "md", "txt", "pt", "pth", "safetensors"}
FIGURE = re.compile(r"\d\s?(ms|s/step|img/s|GB|MB|KB|GFLOP)\b|\d%|\bmeasured\b")


def test_params_and_presets_are_rendered_from_the_dataclasses():
    stale = [str(path.relative_to(ROOT)) for path, text in presets.rendered().items() if path.read_text() != text]
    assert not stale, f"{stale}: not what the config dataclasses say; run `python -m tools.presets`"


@pytest.mark.parametrize("source", sorted(presets.PRESETS.values()), ids=lambda p: p.name)
def test_a_preset_source_holds_only_what_it_changes(source):
    assert presets.repeated(source) == []
    assert load_params(next(k for k, v in presets.PRESETS.items() if v == source))  # the rendered file validates


def test_a_preset_source_naming_an_unknown_key_is_refused(tmp_path):
    source = tmp_path / "p.diff.yaml"
    source.write_text(f"_BASE_: {ROOT / 'params.yaml'}\ntrain:\n  lr_schedule: cosine\n")
    with pytest.raises(KeyError, match="train" + r"\.lr_schedule"):  # split: the walk below reads this file too
        presets.merged(source)


def test_no_measured_figure_in_a_parameter_comment():
    """Figures go stale in a comment: they belong in docs/ with the commit they were measured at."""
    docs = [f"{key}: {doc}" for key, (doc, _) in KEYS.items() if FIGURE.search(doc)]
    sources = [f"{path.name}: {line}" for path in presets.PRESETS.values() for line in path.read_text().splitlines()
               if "#" in line and FIGURE.search(line.split("#", 1)[1])]
    assert not docs + sources, "\n".join(docs + sources)


def _texts():
    """(file, line, text) of every string, comment and f-string text of our Python files (the
    code inside f-string braces left out), and of every line of the docs and YAML files."""
    for name in project_files(ROOT):
        path = ROOT / name
        if name.endswith(".py"):
            for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
                if token.type in (tokenize.STRING, tokenize.COMMENT):
                    yield name, token.start[0], re.sub(r"\{[^{}]*\}", "", token.string)
        elif name.endswith((".md", ".yaml")):
            yield from ((name, k + 1, line) for k, line in enumerate(path.read_text().splitlines()))


def _exists(dotted: str, records: set[str]) -> bool:
    parts = dotted.split(".")
    if parts[-1] in FILE_SUFFIXES or dotted in records:
        return True  # a file name, or a provenance record's key (clip.weights, regions.code_version, ...)
    if ".".join(parts[:2]) in MODULES:
        return True  # a module: train.data, world.grammar, ...
    return any(".".join(parts[:n]) in KEYS and (n == len(parts) or KEYS[".".join(parts[:n])][1] is None)
               for n in range(2, len(parts) + 1))


def test_every_key_named_in_code_docs_and_presets_exists():
    records = {key for record in expected(load_params(ROOT / "params.yaml")).values() for key in record}
    missing = [f"{name}:{line}: {m[0]}" for name, line, text in _texts() for m in NAMED.finditer(text)
               if not _exists(m[0], records)]
    assert not missing, "no such parameter:\n" + "\n".join(missing)


def test_a_wrong_key_in_a_message_is_found():
    """The walk above fails on what it is for: a message naming a key that is not one."""
    records: set[str] = set()
    wrong = "train" + ".align"  # split, or the walk would find it here
    assert [m[0] for m in NAMED.finditer(f'raise ValueError("{wrong}: unknown")') if not _exists(m[0], records)] \
        == [wrong]
    assert all(_exists(m[0], records) for m in NAMED.finditer("train.loss.align, `store.precision`, train/data.py"))
