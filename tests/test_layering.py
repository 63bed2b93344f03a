"""The house rules, read from the source: which package may import which, no import circle, no
stage importing another, and dvc.yaml deps that cover all the code a stage runs (so a code change
reruns exactly the stages it can change)."""
import ast
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline import paths
from tests.conftest import ROOT
from tests.helpers import project_files

PACKAGES = ("world", "corpus", "features", "train", "eval", "pipeline", "graphcap", "tools")
# package → the project packages it must not import: each layer imports only those before it in
# PACKAGES (data flows pipeline → features → store → train → eval; pipeline/ is the app over them,
# graphcap/ the public API over the app, tools/ the scripts outside the installed packages)
FORBIDDEN = {package: set(PACKAGES[k + 1:]) for k, package in enumerate(PACKAGES)}
PIPELINES = ("dvc.yaml", "data/dvc.yaml", "studies/dvc.yaml")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its body (function-level imports too, and
    modules a registry names as strings for importlib), and the packages whose ``__init__``
    running it implies."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and node.value in MODULES and "." in node.value:  # a registry naming one
            names = [node.value]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found | {p for p in _parents(module) if p in MODULES and p != module}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def reach(module: str) -> set[str]:
    """The project modules running ``module`` executes. The parameter parser builds every
    section's dataclass, but a stage's output depends only on the sections it reads (DVC tracks
    their values as params) and on the code that reads them, which this reaches on its own."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += [] if current == "pipeline.params" else imports_of(current)
    return seen


def _is_code(path: Path) -> bool:
    """Whether a file holds more than a docstring (an empty or docstring-only __init__ does not)."""
    body = ast.parse(path.read_text()).body
    return len(body) > (1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0)


def test_each_package_imports_only_the_layers_below_it():
    wrong = [f"{m} imports {i}" for m in MODULES for i in imports_of(m)
             if i.split(".")[0] in FORBIDDEN.get(m.split(".")[0], set())]
    assert not wrong, "\n".join(wrong)


def test_no_stage_imports_another():
    stages = {m for m in MODULES if m.startswith("pipeline.stages.")}
    wrong = [f"{m} imports {i}" for m in stages for i in imports_of(m) if i in stages]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(imports_of(module)):
            if state.get(other) == "open":
                pytest.fail("import circle: " + " → ".join(path[path.index(other):] + [module, other]))
            if other not in state:
                visit(other, path + [module])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [])


def _from_root(name: str, spec: dict) -> dict:
    """The spec with its deps and outs as paths from the project root, and its cmd without the
    ``cd ..`` of a pipeline whose commands run there (studies/ is a DVC project of its own)."""
    here = Path(name).parent / spec.get("wdir", ".")

    def rebase(entry):
        if isinstance(entry, dict):
            return {rebase(k): v for k, v in entry.items()}
        return entry if "${" in entry else os.path.normpath(here / entry)
    return {**spec, "cmd": spec["cmd"].removeprefix("cd .. && "),
            **{key: [rebase(e) for e in spec.get(key, [])] for key in ("deps", "outs", "metrics")}}


def _specs(name: str):
    """(stage name, spec) of a pipeline file, paths from the project root, a ``foreach`` stage
    expanded over the demo params."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage, spec in yaml.safe_load((ROOT / name).read_text())["stages"].items():
        if "foreach" not in spec:
            yield stage, _from_root(name, spec)
            continue
        keys = re.fullmatch(r"\$\{([\w.]+)\}", spec["foreach"])[1].split(".")
        items = params
        for key in keys:
            items = items[key]
        for item in items:
            yield f"{stage}@{item}", _from_root(name, yaml.safe_load(yaml.safe_dump(spec["do"]).replace("${item}", item)))


def _stages():
    """(pipeline file, stage name, module its cmd runs, its deps) of every stage."""
    for name in PIPELINES:
        for stage, spec in _specs(name):
            match = re.match(r"python -m ([\w.]+)", spec["cmd"])
            assert match, f"{name}: stage {stage}: cmd {spec['cmd']!r} is not `python -m <module>`"
            yield name, stage, match[1], [d for d in spec.get("deps", []) if "${" not in d]


@pytest.mark.parametrize("pipeline, stage, module, deps", list(_stages()), ids=lambda v: v if isinstance(v, str) else "")
def test_a_stage_depends_on_every_file_of_ours_it_runs(pipeline, stage, module, deps):
    run = {MODULES[m].relative_to(ROOT).as_posix() for m in reach(module) if _is_code(MODULES[m])}
    missing = sorted(f for f in run if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"{pipeline}: stage {stage} runs these files but does not list them as deps: {missing}"


def test_the_paths_module_and_the_pipelines_name_the_same_files():
    listed = set()
    for name in PIPELINES:
        for _, spec in _specs(name):
            for entry in spec.get("deps", []) + spec.get("outs", []) + spec.get("metrics", []):
                listed.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    named = {str(v) for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)}
    not_dvc = {str(paths.CHECKPOINT), str(paths.ABLATION_WORK), str(paths.ABLATION_TABLE)}  # see paths.py
    assert sorted(n for n in named - not_dvc if not any(entry == n or entry.startswith(n + "/") for entry in listed)) == []
    assert {f"{paths.ABLATION_TABLE}{ext}" for ext in (".md", ".csv", ".json")} <= listed


def test_dvc_lists_the_parameters_the_provenance_records():
    """A key that changes stored features must rerun their stage: the keyword-bank keys the
    clip_text stage lists are those pipeline.provenance records, and every stage that makes image
    or text features lists store.precision."""
    from pipeline.provenance import BANK_KEYS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = {k.removeprefix("keywords.") for k in stages["clip_text"]["params"] if k.startswith("keywords.")}
    assert listed == set(BANK_KEYS)
    for name in ("clip_image", "regions", "clip_text", "region_keywords"):
        assert "store.precision" in stages[name]["params"], name
    assert "store.precision" in stages["optional"]["do"]["params"]


# a folder of one particular machine: a user's home, a CI workspace, a temporary folder's full name
# (each written with a one-letter class, so that the pattern does not match its own line)
MACHINE_PATH = re.compile(r"(?<![\w.~])(/wor[k]/|/hom[e]/\w|/roo[t]/|/User[s]/\w|/privat[e]/var/|/tm[p]/graphcap-|"
                          r"[A-Z]:\\User[s])")


def test_no_absolute_path_of_a_machine_in_the_tree():
    """The tree runs wherever it is cloned: paths are relative to it (../shared beside a checkout)."""
    found = []
    for name in project_files(ROOT):
        data = (ROOT / name).read_bytes()
        if b"\0" in data:  # binary (weights, images)
            continue
        found += [f"{name}:{k + 1}: {line.strip()}" for k, line in enumerate(data.decode("utf-8", "replace").splitlines())
                  if MACHINE_PATH.search(line)]
    assert not found, "\n".join(found)


PIPELINE_BUDGET = 2_600  # lines: pipeline/ after the library code it held moved down (2,524 then)


def test_the_app_layer_stays_thin():
    """pipeline/ holds stages, entry points, the parameters and DVC/cluster glue: every module of it
    is run by a stage or a console script (or the public API, graphcap/), and it stays within its
    line budget — library logic belongs in the package that owns it."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].values()
    entries = {module for *_, module, _ in _stages()} | {s.split(":")[0] for s in scripts} | {
        m for m in MODULES if m.startswith("graphcap")}
    run = set().union(*(reach(m) | _registered(m) for m in entries))
    app = {m for m in MODULES if m.split(".")[0] == "pipeline" and _is_code(MODULES[m])}
    assert not app - run, f"pipeline/ modules no stage or command runs: {sorted(app - run)}"
    lines = sum(len(MODULES[m].read_text().splitlines()) for m in MODULES if m.split(".")[0] == "pipeline")
    assert lines <= PIPELINE_BUDGET, f"pipeline/ has {lines:,} lines (budget {PIPELINE_BUDGET:,}): move library code down"


def _registered(module: str) -> set[str]:
    """Modules a stage runs through a registry (the feature stages' engines): what ``reach``
    does not follow past pipeline.params."""
    return {m for m in MODULES if m.startswith("pipeline.executors.")} if "pipeline.feature_stage" in reach(module) \
        else set()
