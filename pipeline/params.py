"""params.yaml → validated, typed dataclasses. The only module that reads params.yaml.

Every section maps to the config dataclass of the library module that uses it. A params file
is a run's whole configuration: unknown keys, missing keys (only the demo ``world`` section may
be left out), wrongly typed values and choices outside their ``Literal`` fail at once, naming the
key, before any work starts. The dataclasses' defaults serve library callers, never a run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corpus.datasets import SplitConfig, TextConfig
from eval.ablation import AblationConfig
from eval.config import ReportConfig
from features.config import ClipConfig, DetectorConfig, KeywordConfig, KnnConfig, StoreConfig
from train.config import DecodeConfig, ModelConfig, TrainConfig
from world.config import WorldConfig


class ParamsError(ValueError):
    """A parameter file that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """Section ``data`` of the parameters; each field's comment documents its key."""

    dataset: str = "data/world/dataset.json"  # Karpathy split JSON (dataset_coco.json, ...), COCO caption annotations
    #   (captions_train2014.json, or a folder of captions_*.json) or a Flickr token file (results_20130124.token): told
    #   by content
    image_root: str = "data/world"  # each entry's filepath/filename is relative to this folder
    max_images: int = 0  # keep only the first N images (0 = all)
    max_caption_chars: int = 1000  # longer captions are left out, with a warning naming the image
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)  # which images train, validate and test


@dataclass(frozen=True)
class EvaluateConfig:
    """Section ``evaluate`` of the parameters; each field's comment documents its key."""

    split: str = "test"  # the split decoded and scored
    batch_size: int = dataclasses.field(default=50, metadata={"min": 1})  # images decoded at once
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)  # how captions are decoded (the
    #   evaluate stage, graphcap-caption, the demo)


@dataclass(frozen=True)
class Params:
    """A run's whole configuration: one section per field."""

    data: DataConfig  # the data set: its caption file, images and split (corpus/)
    prepare: TextConfig  # caption normalisation (docs/method.md §9)
    store: StoreConfig  # the HDF5 feature store (features/store.py)
    clip: ClipConfig  # CLIP through open_clip (features/clip.py)
    regions: DetectorConfig  # the detector (features/detectors.py: backends features/detector_*.py)
    keywords: KeywordConfig  # keyword banks for the semantic guidance (features/keywords.py)
    knn: KnnConfig  # per-image region graphs (features/knn.py)
    model: ModelConfig  # the captioner (train/model.py)
    train: TrainConfig  # the trainer (train/trainer.py)
    evaluate: EvaluateConfig  # decoding and scoring a split (the evaluate stage)
    ablation: AblationConfig  # the ablation table: studies/ (`make studies`), never part of `dvc repro`
    #   (eval/ablation.py)
    report: ReportConfig  # results/report/index.html (eval/report.py; stage report)
    world: WorldConfig = dataclasses.field(default_factory=WorldConfig, metadata={"optional": True})  # the generated
    #   demo data set (world/generate.py; its stage is in data/dvc.yaml): a real data set's parameters leave it out


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:  # a choice: checked now, not when a stage first uses it
        allowed = typing.get_args(hint)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise ParamsError(f"{key}: {value!r} is not one of {' | '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ParamsError:
                continue
        raise ParamsError(f"{key}: {value!r} is not of type {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    if hint is type(None):
        if value is not None:
            raise ParamsError(f"{key}: expected null, got {value!r}")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ParamsError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, values: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, strictly: every key known, every type right."""
    if not isinstance(values, dict):
        raise ParamsError(f"{prefix}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)  # keys YAML read as numbers or null too
    if unknown:
        raise ParamsError(f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and not f.metadata.get("optional")]
    if missing:  # a key left out would silently take the dataclass's default, which may differ from the docs
        raise ParamsError(f"{prefix}.{missing[0]}: missing (a params file sets every key; params.yaml documents "
                          "each one)")
    kwargs = {k: _check_type(v, hints[k], f"{prefix}.{k}") for k, v in values.items()}
    for f in dataclasses.fields(cls):  # a bound a field's metadata states ({"min": 1}: a count of at least one)
        if "min" in f.metadata and f.name in kwargs and kwargs[f.name] < f.metadata["min"]:
            raise ParamsError(f"{prefix}.{f.name}: {kwargs[f.name]!r} is below its minimum {f.metadata['min']}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a required field missing, or a config's own check (__post_init__)
        raise ParamsError(f"{prefix}: {err}") from err


def load_params(path: Path = Path("params.yaml")) -> Params:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as err:  # ValueError: not UTF-8
        raise ParamsError(f"{path}: cannot read ({type(err).__name__}: {err})") from err
    try:
        params = build(Params, raw, "params")
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from err
    if params.model.reads_region_clip and "region_clip" not in params.store.optional_kinds:
        raise ParamsError(f"{path}: model.region_features {params.model.region_features} reads the region crops' CLIP "
                          "embeddings: add region_clip to store.optional_kinds")
    if params.model.finetune_clip and not params.clip.cache_tokens:
        raise ParamsError(f"{path}: model.finetune_clip needs clip.cache_tokens: true (the tokens entering "
                          "CLIP's last blocks must be in the store)")
    return params
