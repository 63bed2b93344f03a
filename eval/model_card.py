"""The model card (README.md) of a released captioner folder, in the Hugging Face Hub's form: a
YAML header the Hub reads, then what the model is, its test metrics, the features it expects,
how it was trained and how to caption with it."""
from __future__ import annotations

import json
from typing import Any, Mapping

HEADLINE = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIPScore", "RefCLIPScore",
            "world/object_precision", "world/object_recall", "world/relation_accuracy")


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any], training: Mapping[str, Any]) -> str:
    """``config``: the model folder's config.json; ``metrics``: the evaluate stage's
    results/metrics.json; ``training``: the train section of the parameters it was trained with."""
    dataset = config.get("dataset", "unknown")
    scores = [(name, metrics[name]) for name in HEADLINE if isinstance(metrics.get(name), (int, float))]
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in scores)
    features = json.dumps(config.get("features", {}), indent=2, sort_keys=True)
    return f"""---
library_name: graphcap
tags: [image-captioning, clip, gpt2, graph-attention-network]
datasets: [{dataset}]
---

# graphcap captioner trained on {dataset}

A graph-enhanced CLIP + GPT-2 image captioner (Wang et al., Electronics 14(14) 2809, 2025, as
graphcap implements it): CLIP ViT image embeddings and Faster R-CNN regions, a graph attention
network over each image's region graph, multi-scale semantic guidance, a prefix mapping and
GPT-2 ({config.get("model", {}).get("mapping", "mlp")} mapper, {config.get("dims", {}).get("region", "?")}-d
region features). It captions from cached features, not from pixels: graphcap's feature stages
make them.

## Test metrics

{metrics.get("split", "test")} split, {metrics.get("n_images", "?")} images, {metrics.get("decode", "?")} decoding;
pycocoevalcap's scale (papers print ×100), against the raw references through the PTB tokenizer.

| metric | score |
|---|---|
{rows}

## The features it expects

Features made by other extractors or settings are refused by name. Its provenance, per kind:

```json
{features}
```

## Training

```json
{json.dumps({"model": config.get("model", {}), "train": dict(training)}, indent=2, sort_keys=True)}
```

## Captioning with it

```bash
graphcap-caption photo.jpg --model <this folder>   # in a graphcap project whose params.yaml has the
                                                   # clip and regions above, after `dvc repro weights`
```

```python
from train.model import Captioner
model = Captioner.from_pretrained("<this folder or a Hub repository id>")
```

`train.model.push_to_hub(folder, "user/name")` uploads the folder (needs a network and a token).
"""
