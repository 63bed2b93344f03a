"""params.yaml and the presets, written from the one place each key is documented: its config dataclass.

    python -m tools.presets           # rewrite params.yaml and presets/paper.yaml
    python -m tools.presets --check   # exit 1, naming them, if either is not what this would write

Each key's default, type, allowed values (``Literal``) and meaning live in its dataclass field
(``features/config.py``, ``train/config.py``, ...): the comment after the field, continued on
the comment lines right below it. The files users edit are rendered from them:

- ``params.yaml`` (the demo): its own values and leading comment block, every key commented with
  its field's meaning;
- ``presets/paper.yaml``: the source ``presets/paper.diff.yaml`` holds only what the paper changes
  (``_BASE_: ../params.yaml`` plus the differing keys; a section set to null is left out), and the
  complete file users copy (``cp presets/paper.yaml params.yaml``) is rendered from it.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import Params

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 120  # longest line written
COMMENT_COLUMN = 44  # a comment starts at most here (a longer key-value line pushes it right)
PRESETS = {ROOT / "presets/paper.yaml": ROOT / "presets/paper.diff.yaml"}  # rendered file → its source
BASE_KEY = "_BASE_"
GENERATED = "# Rendered by `python -m tools.presets` from {source} (edit that file, not this one).\n"


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in ``cls``'s source: the comment on its line and the comment-only
    lines right below it, joined."""
    lines, _ = inspect.getsourcelines(cls)
    comments = {t.start[0] - 1: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO("".join(lines)).readline) if t.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    docs, current = {}, None
    for k, line in enumerate(lines):
        name = line.strip().split(":")[0]
        if line.startswith("    ") and not line.startswith("     ") and name in names:
            current = name
            docs[name] = [comments[k]] if k in comments else []
        elif current and line.strip().startswith("#"):
            if not line.strip().startswith("#   "):  # a comment meant for the next field would be read as this one's
                raise ValueError(f"{cls.__name__}: {line.strip()!r}: a field's comment goes on its line, continued "
                                 "below it on lines starting '#   '")
            docs[current].append(comments[k])
        else:
            current = None
    return {name: " ".join(part for part in parts if part) for name, parts in docs.items()}


def schema(cls: type = Params, prefix: str = "") -> dict[str, tuple[str, type | None]]:
    """Every key of the parameters, dotted, in the classes' order → (its doc, its section's class
    if it is a section)."""
    hints, docs, out = typing.get_type_hints(cls), field_docs(cls), {}
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        section = hint if dataclasses.is_dataclass(hint) else None
        out[key] = (docs.get(f.name, ""), section)
        if section:
            out.update(schema(section, key + "."))
    return out


def render(values: dict[str, Any], header: str) -> str:
    """The parameters as YAML, every key with its field's doc as a comment, sections apart."""
    keys = schema()
    lines = [header.rstrip("\n"), ""] if header.strip() else []
    for section, body in values.items():
        lines += _mapping({section: body}, "", keys) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _mapping(values: dict[str, Any], prefix: str, keys: dict[str, tuple[str, type | None]]) -> list[str]:
    indent = "  " * prefix.count(".")
    heads = {name: f"{indent}{name}:" + ("" if isinstance(v, dict) or _block(v) else f" {_scalar(v)}")
             for name, v in values.items()}
    column = min(max(len(h) for h in heads.values()) + 2, COMMENT_COLUMN)
    out = []
    for name, value in values.items():
        key = prefix + name
        if key not in keys:
            raise KeyError(f"{key}: not a parameter (no field of that name in its config dataclass)")
        out += _commented(heads[name], keys[key][0], column)
        if isinstance(value, dict):
            out += _mapping(value, key + ".", keys)
        elif _block(value):  # as DVC's YAML writer (`dvc exp run -S`) writes it, so an override changes one line
            out += [indent + line for line in yaml.safe_dump(value, default_flow_style=False).splitlines()]
    return out


def _commented(head: str, doc: str, column: int) -> list[str]:
    """``head`` with ``doc`` after it, wrapped within WIDTH on comment lines aligned below."""
    if not doc:
        return [head]
    at = max(column, len(head) + 2)
    first, *rest = textwrap.wrap(doc, WIDTH - at - 2) or [""]
    if rest:
        rest = textwrap.wrap(" ".join(rest), WIDTH - at - 6)
    return [f"{head.ljust(at)}# {first}"] + [f"{' ' * at}#   {line}" for line in rest]


def _block(value: Any) -> bool:
    """A list is written one item a line (an empty one as [])."""
    return isinstance(value, list) and bool(value)


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).removesuffix(
        "\n...\n").strip()


def leading_comments(path: Path) -> str:
    """The comment block a YAML file starts with (its header)."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        block.append(line)
    return "\n".join(block) + "\n" if block else ""


def merged(diff_file: Path) -> dict[str, Any]:
    """A preset's values: its base's, with the source's keys set (null: the section left out)."""
    diff = yaml.safe_load(diff_file.read_text()) or {}
    base_file = (diff_file.parent / diff.pop(BASE_KEY)).resolve()
    values = yaml.safe_load(base_file.read_text())
    _update(values, diff, "")
    return values


def _update(values: dict[str, Any], diff: dict[str, Any], prefix: str) -> None:
    for name, value in diff.items():
        if name not in values:
            raise KeyError(f"{prefix}{name}: not a key of the base parameters")
        if value is None:
            del values[name]
        elif isinstance(value, dict):
            _update(values[name], value, f"{prefix}{name}.")
        else:
            values[name] = copy.deepcopy(value)


def repeated(diff_file: Path) -> list[str]:
    """Keys a preset's source sets to the value its base already has."""
    diff = yaml.safe_load(diff_file.read_text()) or {}
    base = yaml.safe_load((diff_file.parent / diff.pop(BASE_KEY)).read_text())

    def walk(d: dict[str, Any], b: dict[str, Any], prefix: str) -> list[str]:
        return [k for name, v in d.items() for k in (walk(v, b[name], f"{prefix}{name}.") if isinstance(v, dict)
                                                      else [f"{prefix}{name}"] if b.get(name) == v else [])]
    return walk(diff, base, "")


def rendered() -> dict[Path, str]:
    """What each file this tool owns should hold."""
    params = ROOT / "params.yaml"
    out = {params: render(yaml.safe_load(params.read_text()), leading_comments(params))}
    for preset, source in PRESETS.items():
        header = GENERATED.format(source=source.relative_to(ROOT)) + leading_comments(source)
        out[preset] = render(merged(source), header)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not current")
    args = parser.parse_args(argv)
    stale = [path for path, text in rendered().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not current: run `python -m tools.presets`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in rendered().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
