"""Relation ranking: the questions asked of each image, the likelihood they are scored by, and a
captioner that learnt its images' relations answering them."""
import torch

from eval.relation_ranking import caption_log_likelihoods, relation_questions, relation_ranking
from tests.helpers import synthetic_items, tiny_captioner
from train.config import LossConfig
from train.data import collate
from train.losses import generation_loss, total_loss


def _obj(shape: str, color: str, size: str, x: int, y: int) -> dict:
    side = 20 if size == "small" else 34
    return {"shape": shape, "color": color, "size": size, "box": [x, y, x + side, y + side]}


# three images of two objects each: side by side, one above the other, side by side reversed
EXTRAS = [
    {"scene": "snow", "objects": [_obj("circle", "red", "small", 10, 50), _obj("square", "blue", "large", 80, 40)]},
    {"scene": "beach", "objects": [_obj("star", "green", "small", 60, 5), _obj("triangle", "orange", "large", 55, 80)]},
    {"scene": "city", "objects": [_obj("circle", "purple", "large", 90, 10), _obj("star", "yellow", "small", 5, 20)]},
]


def test_every_ordered_pair_is_asked_with_its_true_relation():
    questions = relation_questions(EXTRAS[0])
    assert [truth for _, truth in questions] == [0, 1]  # circle left of square; square right of circle
    texts, _ = questions[0]
    assert texts == [f"a small red circle {rel} a large blue square in the snow"
                     for rel in ("to the left of", "to the right of", "above", "below")]
    assert [truth for _, truth in relation_questions(EXTRAS[1])] == [2, 3]
    assert relation_questions({"scene": "city", "objects": EXTRAS[0]["objects"][:1]}) == []


def test_log_likelihood_is_the_training_loss_summed(tiny_language):
    model = tiny_captioner(tiny_language).eval()
    batch = collate(synthetic_items(n=1, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    prefix = model.prefix(batch)
    n_tokens = int(batch.mask.sum())
    logits = model.caption_logits(prefix.embeddings, batch.tokens, batch.mask)
    expected = -generation_loss(logits, batch.tokens, batch.mask) * n_tokens
    got = caption_log_likelihoods(model, prefix.embeddings, ["a red circle on the beach"], max_tokens=40)
    torch.testing.assert_close(got, expected[None], rtol=1e-4, atol=1e-4)


def test_a_captioner_that_learnt_the_relations_ranks_them_right(tiny_language):
    torch.manual_seed(0)
    model = tiny_captioner(tiny_language)
    images = synthetic_items(n=3)
    pairs = []  # each image with both of its relation statements
    for item, extra in zip(images, EXTRAS):
        for texts, truth in relation_questions(extra):
            ids = model.tokenizer(texts[truth], add_special_tokens=False).input_ids + [model.tokenizer.eos_token_id]
            pairs.append({**item, "tokens": ids})
    batch = collate(pairs, pad_id=model.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = relation_ranking(model, images, EXTRAS, 2, 40, torch.device("cpu"))
    model.train()
    for _ in range(150):
        loss = total_loss(model, batch, LossConfig())["gen"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = relation_ranking(model, images, EXTRAS, 2, 40, torch.device("cpu"))
    assert after == {"world/relation_ranking": 1.0, "world/relation_pairs": 6}
    assert before["world/relation_ranking"] < 1.0
    mirrored = [{**extra, "objects": [{**o, "box": b["box"]} for o, b in zip(extra["objects"], extra["objects"][::-1])]}
                for extra in EXTRAS]  # the same objects at each other's places: every relation reversed
    assert relation_ranking(model, images, mirrored, 2, 40, torch.device("cpu"))["world/relation_ranking"] == 0.0
