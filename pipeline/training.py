"""Training a captioner on the store, as the train stage and the studies' cells do: the
features, keyword banks, GPT-2, the caption pairs and their phrase groundings, validation."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import torch

from corpus.datasets import scorable
from corpus.groundings import phrase_groundings
from eval.metrics import cider
from features.clip import ClipTail, load_clip, tail_spec
from features.keywords import selectable_keywords
from features.store import read_bank
from pipeline.app import load_manifest
from pipeline.model_inputs import open_features, split_indices, text_encoder
from pipeline.params import Params
from pipeline.paths import keyword_banks
from pipeline.provenance import expected, keyword_bank
from pipeline.runtime import device_of
from train.config import DecodeConfig
from train.data import CaptionPairs, Grounding, Images, labelled_split
from train.decode import caption_images
from train.distributed import World
from train.model import Captioner, FeatureDims, load_gpt2
from train.scst import CiderReward, ClipReward
from train.trainer import SelfCriticalStage, fingerprint, seed_everything, train


def train_captioner(params: Params, manifest_file: Path, out: Path, live_dir: Path, checkpoint: Path,
                    world: World = World()) -> dict[str, float]:
    """Train on the store's train split as ``params`` say; the best epoch by greedy validation
    CIDEr goes to ``out``. Returns its validation scores. Of the manifest it keeps only what
    :func:`training_view` says (memory flat in the data set's size beyond the caption index)."""
    device = device_of(params.store.device)
    manifest = load_manifest(manifest_file, keep=training_view)
    features = open_features(params, manifest, params.model.finetune_clip,
                             with_region_clip=params.model.reads_region_clip)
    bank_file = keyword_banks(params.store.dir)
    scene_words, scene_bank = read_bank(bank_file, "scene", keyword_bank(params))
    object_words, object_bank = read_bank(bank_file, "object", keyword_bank(params))
    keyword_words, keywords = selectable_keywords(params.keywords, (scene_words, scene_bank), (object_words, object_bank))
    images = manifest["images"]
    train_idx, unlabelled_idx = labelled_split(split_indices(manifest, "train", features),
                                               params.train.labelled_fraction, params.train.seed)
    dims = FeatureDims.of(features.image(train_idx[0]), params.model.region_features, len(scene_words),
                          len(object_words), len(keyword_words))
    seed_everything(params.train.seed)
    gpt2, tokenizer = load_gpt2(params.model.gpt2)
    extra = {"features": expected(params), "dataset": manifest["dataset"], "scene_words": scene_words,
             "object_words": object_words,
             "keyword_words": keyword_words, "labelled_images": len(train_idx)}
    tail = None
    if params.model.finetune_clip:  # the captioner's own copy of CLIP's last blocks, from the extractor's weights
        clip = load_clip(params.clip, torch.device("cpu"))
        tail, extra["clip_tail"] = copy.deepcopy(ClipTail(clip.model.visual)), tail_spec(clip)
    model = Captioner(params.model, dims, gpt2, tokenizer, torch.from_numpy(scene_bank), torch.from_numpy(object_bank),
                      tail, torch.from_numpy(keywords))
    captions = [images[i].pop("captions") for i in train_idx]
    scst = self_critical_stage(params, manifest, (train_idx, captions), unlabelled_idx, device)
    train_set = CaptionPairs(features, train_idx, captions, tokenizer, params.train.max_tokens,
                             groundings(params, manifest_file, train_idx))
    val_idx = split_indices(manifest, "val", features, params.train.val_images)
    val_set, references = Images(features, val_idx), {images[i]["id"]: images[i]["raw"] for i in val_idx}
    greedy = DecodeConfig(method="greedy", max_tokens=params.train.max_tokens)

    def scorer(m: Captioner) -> dict[str, float]:
        captions = caption_images(m, val_set, greedy, params.train.batch_size, device)
        return {"CIDEr_greedy": cider(references, {images[i]["id"]: scorable(c) for i, c in zip(val_idx, captions)})}

    return train(model, train_set, params.train, out, live_dir, scorer, "CIDEr_greedy", device, extra,
                 checkpoint=checkpoint, fingerprint=fingerprint(params.model, params.train, extra, train_idx, val_idx),
                 world=world, scst=scst)


def self_critical_stage(params: Params, manifest: dict[str, Any], labelled: tuple[list[int], list[list[str]]],
                        unlabelled_idx: list[int], device: torch.device) -> SelfCriticalStage | None:
    """The SCST epochs' images and reward (None without ``train.scst_epochs``): the labelled
    training images against their own captions (cider), or the images left unlabelled, whose
    captions are not even opened (clip)."""
    if not params.train.scst_epochs:
        return None
    without_captions = open_features(params, manifest, params.model.finetune_clip, with_text=False,
                                     with_region_clip=params.model.reads_region_clip)
    if params.train.scst_reward == "clip":
        return SelfCriticalStage(Images(without_captions, unlabelled_idx), ClipReward(text_encoder(params, device)))
    train_idx, captions = labelled
    return SelfCriticalStage(Images(without_captions, train_idx), CiderReward(train_idx, captions))


def training_view(entry: dict[str, Any]) -> dict[str, Any]:
    """What training keeps of a manifest entry: id and split; the normalised captions of a
    training image (the caption pairs), the raw ones of a validation image (validation CIDEr).
    Ground truth is read again, image by image, by :func:`groundings`."""
    slim = {"id": entry["id"], "split": entry["split"]}
    if entry["split"] == "train":
        slim["captions"] = entry["captions"]
    elif entry["split"] == "val":
        slim["raw"] = entry["raw"]
    return slim


def groundings(params: Params, manifest_file: Path, indices: list[int]) -> Iterator[list[list[Grounding]]] | None:
    """The phrase groundings of the images at ``indices`` for the grounding loss, else None."""
    return phrase_groundings(manifest_file, indices) if params.train.loss.grounding_weight > 0 else None
