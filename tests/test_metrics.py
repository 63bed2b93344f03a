"""The metric wiring equals pycocoevalcap called directly."""
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from eval.metrics import cider, coco_scores, ptb_tokenize, spice_unavailable_reason

REFS = {
    "1": ["a red circle on the beach", "a small red circle by the sea", "the beach has a red circle"],
    "2": ["two blue squares in the snow", "blue squares on snow", "a snowy scene with two squares"],
    "3": ["a man riding a wave on a surfboard", "a surfer in the ocean", "a person surfing a big wave"],
}
CANDS = {"1": "a red circle on the beach", "2": "a blue square in the snow", "3": "a dog on a couch"}


def test_scores_equal_pycocoevalcap_directly():
    scores, per_image = coco_scores(REFS, CANDS)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in CANDS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    assert [scores[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert scores["METEOR"] == pytest.approx(Meteor().compute_score(gts, res)[0])
    assert scores["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    direct_cider, direct_per_image = Cider().compute_score(gts, res)
    assert scores["CIDEr"] == pytest.approx(direct_cider) == pytest.approx(cider(REFS, CANDS))
    assert [per_image["CIDEr"][k] for k in gts] == pytest.approx(list(direct_per_image))
    assert per_image["CIDEr"]["1"] > per_image["CIDEr"]["3"]


def test_spice_is_reported_not_downloaded():
    reason = spice_unavailable_reason()
    scores, _ = coco_scores(REFS, CANDS)
    assert ("SPICE" in scores) == (reason is None)
    if reason:
        assert "stanford-corenlp-3.6.0" in reason


def test_mismatched_ids_are_refused():
    with pytest.raises(ValueError, match="same image ids"):
        coco_scores(REFS, {"1": "x"})


def test_tokenizer_matches_pycocoevalcap_and_leaves_its_folder_alone():
    captions = {"1": ["A Red circle, on the beach!", "The man's dog -- (running)."], "2": ["Café au lait: yes?"]}
    folder = Path(ptbtokenizer.__file__).parent
    before = folder.stat().st_mtime_ns
    ours = ptb_tokenize(captions)
    assert folder.stat().st_mtime_ns == before  # nothing created in the package: a read-only install works
    theirs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    assert ours == theirs and ours["1"][0] == "a red circle on the beach"
    assert folder.stat().st_mtime_ns != before  # (pycocoevalcap's own writes there: the check can fail)


def test_a_scored_caption_never_holds_the_number_token():
    from corpus.datasets import scorable

    assert scorable("two <num> dogs on a bench") == "two dogs on a bench"


def test_the_model_card_holds_the_test_metrics_and_the_features_it_expects():
    from eval.model_card import model_card

    config = {"dataset": "coco", "model": {"mapping": "mlp"}, "dims": {"region": 1024},
              "features": {"clip_image": {"clip.activation": "quick_gelu"}}}
    from dataclasses import asdict

    from pipeline.params import load_params
    from tests.conftest import ROOT

    params = asdict(load_params(ROOT / "presets/paper.yaml"))
    card = model_card(config, {"CIDEr": 1.1234, "BLEU-4": 0.3, "SPICE": "unavailable", "split": "test",
                               "n_images": 5000, "decode": "hybrid"}, {"lr": 1e-4}, params, 3 * 2**30)
    assert "| CLIP | ViT-B-32 (quick_gelu), weights `openai` |" in card and "3,072 MB in all" in card
    assert "| detector | torchvision fasterrcnn_resnet50_fpn, weights" in card and "| precision | fp32 |" in card
    assert card.startswith("---\nlibrary_name: graphcap") and "datasets: [coco]" in card
    assert "| CIDEr | 1.1234 |" in card and "| BLEU-4 | 0.3000 |" in card and "SPICE |" not in card
    assert '"clip.activation": "quick_gelu"' in card and '"lr": 0.0001' in card
