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


def clip_settings(params: Params) -> dict[str, str]:
    """The CLIP keys besides its sources that decide what a copy stands for."""
    return {"model": params.clip.model, "config_file": params.clip.config_file, "activation": params.clip.activation}


def resolve(params: Params) -> dict[str, Path]:
    """name → a local file or folder holding it; raises :class:`MissingWeights` naming every
    input that is missing and how to get each, in one message (not one a run)."""
    found, missing = {}, []
    for name, spec in sources(params).items():
        try:
            found[name] = _resolve_one(params, name, spec)
        except MissingWeights as err:
            missing.append(str(err))
    if missing:
        raise MissingWeights(f"{len(missing)} pretrained input(s) missing: " + "; ".join(missing))
    return found


def _resolve_one(params: Params, name: str, spec: str) -> Path:
    if spec and Path(spec).resolve().is_relative_to(WEIGHTS.resolve()):
        raise MissingWeights(f"{_KEYS[name]}: {spec} lies in {WEIGHTS}/, which the weights stage rewrites: "
                             "keep the sources elsewhere (e.g. pretrained/)")
    if spec and Path(spec).exists():
        if name in ("clip", "detector") and not Path(spec).is_file():
            raise MissingWeights(f"{_KEYS[name]}: {spec} is a folder; name the weights file in it")
        return Path(spec)
    if name == "clip":
        return _cached_clip(params.clip.model, spec)
    if name == "gpt2":
        return _cached_repo(spec, "model.gpt2")
    if name == "detector":
        raise MissingWeights(f"regions.weights: {spec!r} is not a local file; save torchvision's COCO weights once on "
                             "a machine with a network (docs/real-data.md, \"Weights\")")
    raise MissingWeights(f"{_KEYS[name]}: {spec!r} is not a local file or folder")


_KEYS = {"clip": "clip.pretrained", "detector": "regions.weights", "gpt2": "model.gpt2",
         "clip_tokenizer": "clip.tokenizer"}


def _cached_clip(model: str, tag: str) -> Path:
    import open_clip
    from huggingface_hub import hf_hub_download

    tagged = open_clip.get_pretrained_cfg(model, tag)
    hub = tagged.get("hf_hub", "")
    if not hub:
        raise MissingWeights(f"clip.pretrained: {tag!r} is neither a local file nor an open_clip tag of {model}")
    if _preprocessing(tagged) != _preprocessing({}):  # a copy is loaded as a file, with the model's defaults
        raise MissingWeights(f"clip.pretrained: tag {tag!r} preprocesses images its own way, which a local copy would "
                             "not: not supported by the weights stage yet")
    repo, filename = os.path.split(hub.rstrip("/")) if hub.rstrip("/").count("/") > 1 else (hub.rstrip("/"), "")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin") if not filename else (filename,):
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # not in the cache under this name  # noqa: BLE001
            continue
    raise MissingWeights(f"clip.pretrained: {tag!r} ({model}) is not in the hub's local cache; on a machine with a "
                         f"network run `hf download {repo}` (or give a local weights file)")


def _cached_repo(name: str, key: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, or a name that is not a repository id  # noqa: BLE001
        raise MissingWeights(f"{key}: {name!r} is not a local folder nor in the hub's local cache; on a machine "
                             f"with a network run `hf download {name}` (or give a local folder)") from err


def copy_into(found: dict[str, Path], record: dict, folder: Path = WEIGHTS) -> None:
    """Each resolved input into ``folder/<name>/`` (hard links where the file system allows,
    the hub cache's symlinks followed), and ``record`` as sources.json; replaced as a whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, path in found.items():
        target = tmp / name
        if path.is_dir():
            shutil.copytree(path, target, copy_function=_copy, ignore=_not_loaded)
        else:
            target.mkdir()
            _copy(str(path), str(target / path.name))
    (tmp / "sources.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _copy(source: str, target: str) -> None:
    """A copy: DVC may hard-link its cache to the copy and make it read-only, which must not reach
    a source that is rewritten in place (retrained demo encoders, a new torch.save). Files of the
    hub's cache, which the hub never rewrites, are hard-linked where the file system allows."""
    real = os.path.realpath(source)  # the hub cache's snapshot files are symlinks to blobs
    if real != os.path.abspath(source):
        try:
            os.link(real, target)
            return
        except OSError:
            pass
    shutil.copy2(real, target)


# what a hub repository may hold that neither transformers nor open_clip load here (other frameworks)
_OTHER_FORMATS = ("*.h5", "*.msgpack", "*.ot", "*.tflite", "*.onnx", "onnx", "*.mlmodel", "coreml", ".gitattributes")


def _not_loaded(folder: str, names: list[str]) -> set[str]:
    ignored = shutil.ignore_patterns(*_OTHER_FORMATS)(folder, names)
    if any(n.endswith(".safetensors") for n in names):  # the safetensors weights are loaded: no pickled twin
        ignored |= {n for n in names if n.endswith(".bin") and n.startswith("pytorch_model")}
    return ignored


def _preprocessing(tagged: dict) -> tuple:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return (tuple(tagged.get("mean", OPENAI_DATASET_MEAN)), tuple(tagged.get("std", OPENAI_DATASET_STD)),
            tagged.get("interpolation", "bicubic"), tagged.get("resize_mode", "shortest"))


def localise(params: Params, folder: Path = WEIGHTS) -> Params:
    """``params`` with every pretrained input pointing at its copy in ``folder`` when the weights
    stage resolved exactly these sources; otherwise as they are (a stage run outside the
    pipeline, or a source changed since: DVC reruns the weights stage first)."""
    path = folder / "sources.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if record.get("sources") != sources(params) or record.get("clip") != clip_settings(params):
        return params
    clip_file = next((folder / "clip").iterdir())  # a tag's activation, resolved when the tag was known:
    clip = dataclasses.replace(params.clip, pretrained=str(clip_file), activation=record["clip_activation"],
                               tokenizer=str(folder / "clip_tokenizer") if params.clip.tokenizer else "")
    regions = dataclasses.replace(params.regions, weights=str(next((folder / "detector").iterdir())))
    model = dataclasses.replace(params.model, gpt2=str(folder / "gpt2"))
    return dataclasses.replace(params, clip=clip, regions=regions, model=model)
