"""Pretrained weights as tracked inputs. The ``weights`` stage resolves every pretrained input the
parameters name (CLIP, the detector, GPT-2 and its tokenizer) from a local file or folder, or from
the Hugging Face hub's local cache, into ``weights/``: DVC outputs, so ``dvc push``/``pull`` share
them with the features and a changed weight reruns what it must. ``weights/sources.json`` says
which source each copy stands for; :func:`localise` points the parameters at the copies, so every
later stage reads exactly what was resolved, and nothing downloads behind DVC's back.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.params import Params
from pipeline.paths import WEIGHTS

log = logging.getLogger(__name__)

SOURCES = WEIGHTS / "sources.json"


class MissingWeights(FileNotFoundError):
    """A pretrained input that is neither a local path nor in the hub's local cache."""


def sources(params: Params) -> dict[str, str]:
    """name → the spec the parameters give (a local path, an open_clip tag, a hub name)."""
    named = {"clip": params.clip.pretrained, "detector": params.regions.weights, "gpt2": params.model.gpt2}
    if params.clip.tokenizer:
        named["clip_tokenizer"] = params.clip.tokenizer
    return named


def resolve(params: Params) -> dict[str, Path]:
    """name → a local file or folder holding it; raises :class:`MissingWeights` naming what is
    missing and how to get it."""
    found = {}
    for name, spec in sources(params).items():
        if spec and Path(spec).resolve().is_relative_to(WEIGHTS.resolve()):
            raise MissingWeights(f"{_KEYS[name]}: {spec} lies in {WEIGHTS}/, which the weights stage rewrites: "
                                 "keep the sources elsewhere (e.g. pretrained/)")
        if spec and Path(spec).exists():
            found[name] = Path(spec)
        elif name == "clip":
            found[name] = _cached_clip(params.clip.model, spec)
        elif name == "gpt2":
            found[name] = _cached_repo(spec, "model.gpt2")
        else:
            raise MissingWeights(f"{_KEYS[name]}: {spec!r} is not a local file or folder")
    return found


_KEYS = {"clip": "clip.pretrained", "detector": "regions.weights", "gpt2": "model.gpt2",
         "clip_tokenizer": "clip.tokenizer"}


def _cached_clip(model: str, tag: str) -> Path:
    import open_clip
    from huggingface_hub import hf_hub_download

    hub = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "")
    if not hub:
        raise MissingWeights(f"clip.pretrained: {tag!r} is neither a local file nor an open_clip tag of {model}")
    repo, filename = os.path.split(hub.rstrip("/")) if hub.rstrip("/").count("/") > 1 else (hub.rstrip("/"), "")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin") if not filename else (filename,):
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # not in the cache under this name  # noqa: BLE001
            continue
    raise MissingWeights(f"clip.pretrained: {tag!r} ({model}) is not in the hub's local cache; on a machine with a "
                         f"network run `huggingface-cli download {repo}` (or give a local weights file)")


def _cached_repo(name: str, key: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, or a name that is not a repository id  # noqa: BLE001
        raise MissingWeights(f"{key}: {name!r} is not a local folder nor in the hub's local cache; on a machine "
                             f"with a network run `huggingface-cli download {name}` (or give a local folder)") from err


def copy_into(found: dict[str, Path], record: dict, folder: Path = WEIGHTS) -> None:
    """Each resolved input into ``folder/<name>/`` (hard links where the file system allows,
    the hub cache's symlinks followed), and ``record`` as sources.json; replaced as a whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, path in found.items():
        target = tmp / name
        if path.is_dir():
            shutil.copytree(path, target, copy_function=_link_or_copy)
        else:
            target.mkdir()
            _link_or_copy(str(path), str(target / path.name))
    (tmp / "sources.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _link_or_copy(source: str, target: str) -> None:
    source = os.path.realpath(source)  # the hub cache's snapshot files are symlinks to blobs
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def localise(params: Params, folder: Path = WEIGHTS) -> Params:
    """``params`` with every pretrained input pointing at its copy in ``folder`` when the weights
    stage resolved exactly these sources; otherwise as they are (a stage run outside the
    pipeline, or a source changed since: DVC reruns the weights stage first)."""
    path = folder / "sources.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if record.get("sources") != sources(params):
        return params
    clip_file = next((folder / "clip").iterdir())  # a tag's activation, resolved when the tag was known:
    clip = dataclasses.replace(params.clip, pretrained=str(clip_file), activation=record["clip_activation"],
                               tokenizer=str(folder / "clip_tokenizer") if params.clip.tokenizer else "")
    regions = dataclasses.replace(params.regions, weights=str(next((folder / "detector").iterdir())))
    model = dataclasses.replace(params.model, gpt2=str(folder / "gpt2"))
    return dataclasses.replace(params, clip=clip, regions=regions, model=model)
