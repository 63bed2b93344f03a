"""The model card (README.md) of a released captioner folder, in the Hugging Face Hub's form: a
YAML header the Hub reads, then what the model is, how to caption with it, its test metrics, its
extractors and decoding as a table, the provenance it checks and how it was trained."""
from __future__ import annotations

import json
from typing import Any, Mapping

HEADLINE = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIPScore", "RefCLIPScore",
            "world/object_precision", "world/object_recall", "world/relation_accuracy")


def model_card(config: Mapping[str, Any], metrics: Mapping[str, Any], training: Mapping[str, Any],
               params: Mapping[str, Any], size_bytes: int) -> str:
    """``config``: the model folder's config.json; ``metrics``: the evaluate stage's
    results/metrics.json; ``training``: the train section of the parameters it was trained with;
    ``params``: the release's params.yaml; ``size_bytes``: the release folder's size."""
    dataset = config.get("dataset", "unknown")
    scores = [(name, metrics[name]) for name in HEADLINE if isinstance(metrics.get(name), (int, float))]
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in scores)
    features = json.dumps(config.get("features", {}), indent=2, sort_keys=True)
    return f"""---
library_name: graphcap
tags: [image-captioning, clip, gpt2, graph-attention-network]
datasets: [{dataset}]
sdk: gradio  # the folder also runs as a Hugging Face Space: app.py, requirements.txt
app_file: app.py
---

# graphcap captioner trained on {dataset}

A graph-enhanced CLIP + GPT-2 image captioner (Wang et al., Electronics 14(14) 2809, 2025, as
graphcap implements it): CLIP ViT image embeddings and Faster R-CNN regions, a graph attention
network over each image's region graph, multi-scale semantic guidance, a prefix mapping and
GPT-2 ({config.get("model", {}).get("mapping", "mlp")} mapper, {config.get("dims", {}).get("region", "?")}-d
region features). The folder is self-contained: it holds the extractors' weights and settings
(copied rather than named by a hub id, so that it captions offline and as one Hub repository;
{size_bytes / 2**20:,.0f} MB in all) and captions from pixels.

## Captioning with it

```bash
pip install graphcap            # or: pip install -e . in a graphcap checkout
graphcap-caption photo.jpg more/photos/ --model <this folder or its Hub id>
```

```python
from graphcap import Captioner
captioner = Captioner.from_pretrained("<this folder or its Hub id>")
captioner.caption(["photo.jpg", pil_image])   # -> one caption per image
```

The demo (Gradio): `python app.py` in this folder (`pip install -r requirements.txt` first), or
upload the folder as a Space (`huggingface_hub.upload_folder(..., repo_type="space")`); its API:
`gradio_client.Client(url).predict(handle_file("photo.jpg"), api_name="/caption")`. `app.py`
runs the graphcap code this model was trained with, copied under `code/`.

## Extractors and decoding

{extractor_table(params)}

## Test metrics

{metrics.get("split", "test")} split, {metrics.get("n_images", "?")} images, {metrics.get("decode", "?")} decoding;
pycocoevalcap's scale (papers print ×100), against the raw references through the PTB tokenizer.

| metric | score |
|---|---|
{rows}

## The features it expects

Extractors or settings other than these are refused by name. The provenance it checks, per kind:

```json
{features}
```

## Training

```json
{json.dumps({"model": config.get("model", {}), "train": dict(training)}, indent=2, sort_keys=True)}
```

`train.model.push_to_hub(folder, "user/name")` uploads the folder (needs a network and a token).
"""


def extractor_table(params: Mapping[str, Any]) -> str:
    """The settings that turn pixels into this model's inputs, as a short table."""
    clip, regions, decode = params["clip"], params["regions"], params["evaluate"]["decode"]
    rows = [
        ("CLIP", f"{clip['model']} ({clip['activation']}), weights `{clip['pretrained']}`"),
        ("detector", f"{regions['backend']} {regions['arch'] or regions['d2_config']}, weights "
                     f"`{regions['weights']}`, classes `{regions['classes']}`"),
        ("detector settings", f"{regions['min_size']}–{regions['max_size']} px, score ≥ {regions['box_score_thresh']}, "
                              f"NMS {regions['box_nms_thresh']}, {regions['max_regions']} regions at most, "
                              f"{regions['feature']} features"),
        ("region graph", f"{params['knn']['k']} nearest neighbours ({params['knn']['metric']})"),
        ("keywords", f"scene bank {params['keywords']['scene_bank']}, object bank {params['keywords']['object_bank']}, "
                     f"local from {params['keywords']['local_source']}"),
        ("precision", params["store"]["precision"]),
        ("decoding", ", ".join(f"{k} {v}" for k, v in decode.items())),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)
