"""The grounding loss: phrase groundings → the regions each token is grounded to → supervision of
GPT-2's attention on the region tokens; and the fixed-sector spatial context it works with."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from tests.helpers import synthetic_items, tiny_captioner
from train.config import DecodeConfig, LossConfig
from train.data import CaptionPairs, collate, token_phrases
from train.decode import coverage_penalty, decode, search, texts_of
from train.losses import grounding_loss, total_loss
from train.model import Prefix
from train.region_graph import SpatialContext
from world.grammar import ground_caption

RED_LARGE, BLUE, RED_SMALL = [10, 10, 40, 40], [80, 20, 100, 40], [50, 90, 70, 110]
OBJECTS = [{"shape": "circle", "color": "red", "size": "large", "box": RED_LARGE},
           {"shape": "square", "color": "blue", "size": "small", "box": BLUE},
           {"shape": "circle", "color": "red", "size": "small", "box": RED_SMALL}]
CAPTION = "a small green triangle to the left of a large purple star in the forest"


def test_the_world_grounds_each_mention_to_the_objects_it_fits():
    caption = "a large red circle to the left of a small blue square in the city"
    assert ground_caption(caption, OBJECTS) == [(0, 4, [RED_LARGE]), (8, 12, [BLUE])]  # articles included
    assert ground_caption("a red circle and a blue square", OBJECTS) == [(0, 3, [RED_LARGE, RED_SMALL]), (4, 7, [BLUE])]
    assert ground_caption("a green star in the snow", OBJECTS) == [(0, 3, [])]  # names nothing shown: no target
    assert ground_caption("in the city there is a red circle", OBJECTS)[0][0] == 5
    assert ground_caption("two shapes in the city", OBJECTS) == []


def test_tokens_stay_with_the_object_last_named(tiny_language):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_language)  # splits words into several tokens
    ids = tokenizer(CAPTION, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    phrases = [(1, 4, [RED_LARGE]), (9, 12, [BLUE])]
    got = token_phrases(tokenizer, CAPTION, phrases, n_tokens=len(ids))
    text = {k: tokenizer.decode([i for i, p in zip(ids, got) if p == k]).strip() for k in (-1, 0, 1)}
    # "a" before the first mention: none; the relation and the next article stay with the first object
    assert text[0] == "small green triangle to the left of a"
    assert text[1] == "large purple star in the forest"
    assert text[-1].startswith("a") and got[-1] == -1  # ... and EOS (it predicts nothing)


def test_caption_pairs_ground_tokens_to_the_regions_that_show_the_object(tiny_language):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_language)
    phrases = [(1, 4, [RED_LARGE]), (9, 12, [BLUE, RED_SMALL])]
    pairs = CaptionPairs(None, [0], [[CAPTION]], tokenizer, max_tokens=40, groundings=[[phrases]])
    regions = np.array([[82, 21, 99, 41], [11, 9, 41, 40], [0, 0, 30, 30], [50, 90, 70, 110]], np.float32)
    token_phrase = pairs.token_phrase[pairs.offsets[0]:pairs.offsets[1]]
    ground = pairs.ground(token_phrase, regions)  # (T, N)
    assert ground.shape == (len(token_phrase), 4)
    assert not ground[token_phrase == -1].any()
    assert (ground[token_phrase == 0] == [False, True, False, False]).all()  # region 2: IoU < 0.5 with the red circle
    assert (ground[token_phrase == 1] == [True, False, False, True]).all()


def test_collate_places_each_caption_s_targets_at_its_image_s_nodes():
    items = synthetic_items(n=2)
    for it in items:
        it["tokens"] = np.array([5, 6, 7])
        it["ground"] = np.zeros((3, len(it["boxes"])), bool)
    items[1]["ground"][2, 0] = True  # token 2 of caption 1 → the first region of image 1 (node 4: image 0 has 4)
    ground = collate(items).ground
    assert ground.shape == (2, 3, 5) and ground.nonzero().tolist() == [[1, 2, 4]]


def test_grounding_loss_is_minus_log_attention_mass_on_the_object_s_region_tokens():
    attention = torch.softmax(torch.randn(1, 2, 3, 4), dim=-1)  # (B, heads, T, L_p): 1 mapped token + 3 slots
    slots = torch.tensor([[2, 0, -1]])  # slot 0 holds node 2, slot 1 node 0, slot 2 is empty
    ground = torch.zeros(1, 3, 3, dtype=torch.bool)
    ground[0, 1, 0] = True  # token 1 → node 0 (slot 1)
    ground[0, 2, [0, 2]] = True  # token 2 → nodes 0 and 2 (slots 1 and 0)
    prefix = Prefix(torch.zeros(1, 4, 8), None, None, None, region_slots=slots)
    got = grounding_loss(attention, prefix, ground, first_slot=1, heads=1)
    a = attention[0, 0]
    expected = -(math.log(a[1, 2]) + math.log(a[2, 2] + a[2, 1])) / 2
    assert float(got) == pytest.approx(expected, rel=1e-5)


def _grounded_batch(model):
    items = synthetic_items(n=3, tokenizer=model.tokenizer)
    for it in items:
        it["ground"] = np.zeros((len(it["tokens"]), len(it["boxes"])), bool)
        it["ground"][1:-1, 0] = True  # every word after the first is grounded to the image's first region
    return collate(items, pad_id=model.tokenizer.pad_token_id)


def test_training_on_the_grounding_loss_moves_attention_to_the_object(tiny_language):
    torch.manual_seed(0)
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, spatial_directions=8,
                   spatial_context="bins").eval()  # no dropout: a smooth descent
    batch, cfg = _grounded_batch(model), LossConfig(grounding_weight=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        parts = total_loss(model, batch, cfg)
        losses.append(float(parts["ground"]))
        parts["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[0] > 1.0 and losses[-1] < 0.1  # attention mass on the object's token: < 0.37 at first, > 0.9 after


def test_grounding_needs_region_tokens_and_groundings_and_a_real_head(tiny_language):
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4)
    batch = _grounded_batch(model)
    with pytest.raises(ValueError, match="grounding_weight needs region tokens"):
        total_loss(model, dataclasses.replace(batch, ground=None), LossConfig(grounding_weight=1.0))
    with pytest.raises(ValueError, match="grounding_weight needs region tokens"):
        total_loss(tiny_captioner(tiny_language), batch, LossConfig(grounding_weight=1.0))
    with pytest.raises(ValueError, match="grounding_heads: 3 is not within 1..2"):
        total_loss(model, batch, LossConfig(grounding_weight=1.0, grounding_heads=3))
    assert "ground" not in total_loss(model, batch, LossConfig())  # off by default


def test_spatial_bins_are_fixed_angle_sectors_of_the_neighbour_s_centre_or_overlap():
    def box(cx, cy, side=0.1):
        return [cx, cy, side, side, side * side]
    # neighbours right, above, left, below (image y points down), up-right under 45°, and a second
    # detection of the same object (IoU 0.82)
    seen = torch.tensor([box(0.8, 0.5), box(0.5, 0.2), box(0.2, 0.5), box(0.5, 0.8), box(0.8, 0.4), box(0.51, 0.5)])
    seen_from = torch.tensor([box(0.5, 0.5)] * len(seen))
    weights = SpatialContext(h=4, directions=8, mode="bins").class_weights(seen_from, seen)
    assert weights.sum(dim=1).tolist() == [1.0] * 6  # one class each
    assert weights.argmax(dim=1).tolist() == [0, 2, 4, 6, 0, 8]  # class 8: overlap
    quadrants = SpatialContext(h=4, directions=4, mode="bins").class_weights(seen_from, seen)
    assert quadrants.argmax(dim=1).tolist() == [0, 1, 2, 3, 0, 4]
    with pytest.raises(ValueError, match="model.spatial_context: unknown 'cones'"):
        SpatialContext(h=4, directions=4, mode="cones")


def test_spatial_bins_context_changes_only_when_a_neighbour_changes_sector():
    torch.manual_seed(0)
    context = SpatialContext(h=8, directions=8, mode="bins")
    node_batch = torch.tensor([0, 0])
    geometry = torch.tensor([[0.2, 0.5, 0.1, 0.1, 0.01], [0.6, 0.5, 0.1, 0.1, 0.01]])  # node 1 right of node 0
    tokens = torch.randn(2, 8)
    out = context(tokens, node_batch, geometry)
    within = geometry.clone()
    within[1, :2] = torch.tensor([0.8, 0.45])  # further right and a little up: the same sector
    torch.testing.assert_close(context(tokens, node_batch, within), out)
    across = geometry.clone()
    across[1, :2] = torch.tensor([0.2, 0.1])  # straight above node 0
    assert not torch.allclose(context(tokens, node_batch, across), out)


def test_coverage_penalty_is_the_log_attention_mass_each_region_got_capped_at_one(tiny_language):
    torch.manual_seed(0)
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, spatial_directions=4,
                   spatial_tokens=True).eval()
    batch = _grounded_batch(model)
    prefix = model.prefix(batch)
    eos = model.tokenizer.eos_token_id
    tokens = torch.randint(0, eos, (3, 2, 6))
    tokens[:, 0, 4:] = eos  # beam 0 ends after 4 words: the tokens after its EOS do not count
    penalty = coverage_penalty(model, prefix.embeddings, prefix.region_slots, tokens, heads=2)
    assert penalty.shape == (3, 2) and (penalty <= 0).all()
    for image in range(3):
        for beam, length in ((0, 5), (1, 6)):  # through the first EOS
            caption = tokens[image, beam, :length][None]
            _, attention = model.caption_forward(prefix.embeddings[image:image + 1], caption,
                                                 torch.ones_like(caption), return_attention=True)
            on_slots = attention[0, :2, :, 3:].sum(dim=1).mean(dim=0)  # (S,) mass per slot over the caption
            slots = prefix.region_slots[image]
            expected = sum(math.log(min(float(on_slots[slots == node].sum()), 1.0))
                           for node in slots[slots >= 0].unique().tolist())  # own and context slot together
            assert float(penalty[image, beam]) == pytest.approx(expected, rel=1e-4)


def test_coverage_rerank_adds_the_weighted_penalty_to_the_beam_scores(tiny_language):
    torch.manual_seed(0)
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4).eval()
    batch = _grounded_batch(model)
    plain = DecodeConfig(method="beam", beam_size=4, max_tokens=6)
    embeds = model.prefix(batch).embeddings
    beams, scores = search(model, embeds, plain, 0, 4)  # most probable first
    penalty = coverage_penalty(model, embeds, model.prefix(batch).region_slots, beams, heads=2)
    candidates = [texts_of(model, b) for b in beams]
    for weight in (0.0, 0.5, 100.0):
        chosen = decode(model, batch, dataclasses.replace(plain, rerank="coverage", coverage_weight=weight))
        best = (scores + weight * penalty).argmax(dim=-1).tolist()
        assert chosen == [options[j] for options, j in zip(candidates, best)]
    assert decode(model, batch, dataclasses.replace(plain, rerank="coverage", coverage_weight=0.0)) == \
        decode(model, batch, plain)
    with pytest.raises(ValueError, match="rerank coverage ranks the final beams"):
        decode(model, batch, DecodeConfig(method="greedy", rerank="coverage"))
    with pytest.raises(ValueError, match="coverage_heads: 3 is not within 1..2"):
        decode(model, batch, dataclasses.replace(plain, rerank="coverage", coverage_heads=3))
    with pytest.raises(ValueError, match="rerank coverage needs region tokens"):
        decode(tiny_captioner(tiny_language).eval(), batch, dataclasses.replace(plain, rerank="coverage"))
