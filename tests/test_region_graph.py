"""Box geometry and per-region prefix tokens (beyond the paper's mean-pooled regions)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import changed_by_one_step, synthetic_items, tiny_captioner
from train.data import collate
from train.region_graph import SpatialContext, box_geometry, box_sinusoids, edge_geometry, region_slots, reorder_slots


def test_box_geometry_is_relative_to_the_image():
    boxes = torch.tensor([[0.0, 0.0, 64.0, 32.0], [96.0, 48.0, 128.0, 64.0]])
    sizes = torch.tensor([[64.0, 128.0], [64.0, 128.0]])  # (height, width)
    expected = [[0.25, 0.25, 0.5, 0.5, 0.25], [0.875, 0.875, 0.25, 0.25, 0.0625]]
    torch.testing.assert_close(box_geometry(boxes, sizes), torch.tensor(expected))
    edges = torch.tensor([[0, 1], [1, 0]])  # 0 → 1 and 1 → 0
    relative = edge_geometry(box_geometry(boxes, sizes), edges)
    torch.testing.assert_close(relative[0], -relative[1])  # what 0 sees of 1 is the reverse of what 1 sees of 0
    torch.testing.assert_close(relative[0, :2], torch.tensor([-0.625, -0.625]))


def test_box_sinusoids_make_small_geometry_differences_unit_scale():
    small, large = torch.tensor([[0.5, 0.5, 0.15, 0.15, 0.0225]]), torch.tensor([[0.5, 0.5, 0.27, 0.27, 0.0729]])
    codes = box_sinusoids(torch.cat([small, large]))  # (2, 50)
    assert codes.shape == (2, 50)
    torch.testing.assert_close(codes.norm(dim=-1), torch.full((2,), 5.0))  # sin² + cos² = 1 for each of 25 angles
    assert (codes[0] - codes[1]).norm() > 2.0  # the boxes themselves differ by 0.18 at most


def test_region_token_skip_keeps_each_region_s_own_feature(tiny_language):
    """A GAT whose output is the same for every node (zero weights) leaves tokens that cannot tell
    regions apart; the skip connection puts each region's own feature back into its token."""
    batch = collate(synthetic_items(n=2, tokenizer=None), pad_id=0)
    tokens = {}
    for skip in (False, True):
        model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, region_token_skip=skip).eval()
        with torch.no_grad():
            for p in model.gat.parameters():
                p.zero_()
        tokens[skip] = model.prefix(batch).embeddings[0, 3:5]  # image 0's first two region tokens
        assert model.region_tokens.project[0].in_features == model.gat.out_dim + model.dims.region * skip
    torch.testing.assert_close(tokens[False][0], tokens[False][1])
    assert not torch.allclose(tokens[True][0], tokens[True][1])


def test_region_slots_order_by_score_or_position_and_cap():
    node_batch = torch.tensor([0, 0, 0, 1, 2, 2])
    geometry = torch.zeros(6, 5)
    geometry[:, 0] = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2, 0.2])  # centre x
    geometry[:, 1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.8, 0.1])  # centre y: node 5 is above node 4
    assert region_slots(node_batch, geometry, 3, 2, "score").tolist() == [[0, 1], [3, -1], [4, 5]]
    assert region_slots(node_batch, geometry, 3, 3, "position").tolist() == [[1, 2, 0], [3, -1, -1], [5, 4, -1]]
    assert region_slots(node_batch, geometry, 3, 3, "top_down").tolist() == [[1, 2, 0], [3, -1, -1], [5, 4, -1]]
    geometry[:3, 1] = torch.tensor([0.1, 0.7, 0.4])  # image 0 from the top: node 0, node 2, node 1
    assert region_slots(node_batch, geometry, 3, 3, "top_down").tolist()[0] == [0, 2, 1]
    assert region_slots(node_batch, geometry, 3, 3, "position").tolist()[0] == [1, 2, 0]  # x still decides
    kept = region_slots(node_batch, geometry, 3, 2, "position")  # image 0 keeps nodes 1 and 2
    assert reorder_slots(kept, geometry, "top_down").tolist() == [[2, 1], [3, -1], [5, 4]]
    with pytest.raises(ValueError, match="model.region_order: unknown 'size'"):
        region_slots(node_batch, geometry, 3, 2, "size")


def test_region_tokens_follow_the_paper_prefix_and_fill_empty_slots(tiny_language):
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=5, region_order="position").eval()
    batch = collate(synthetic_items(n=3, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)  # 4, 1, 7 regions
    embeddings = model.prefix(batch).embeddings
    assert embeddings.shape == (3, 3 + 5, model.gpt2.config.n_embd)
    empty = model.region_tokens.empty
    assert [int((embeddings[b, 3:] == empty).all(dim=-1).sum()) for b in range(3)] == [1, 4, 0]
    paper = tiny_captioner(tiny_language).eval()  # the same weights before the tokens: the paper's prefix is unchanged
    torch.testing.assert_close(embeddings[:, :3], paper.prefix(batch).embeddings)


def test_spatial_context_gathers_only_the_image_s_other_regions_by_their_relative_box():
    torch.manual_seed(0)
    context = SpatialContext(h=8, directions=4)
    node_batch = torch.tensor([0, 0, 0, 1])  # image 1 has a single region: nothing to gather
    geometry = torch.rand(4, 5)
    tokens = torch.randn(4, 8)
    out = context(tokens, node_batch, geometry)
    torch.testing.assert_close(out[3], context.out.bias)  # an empty context
    moved = geometry.clone()
    moved[1, :2] += 0.3  # region 1 moves: what regions 0 and 2 see of it changes, and what it sees of them
    changed = ~torch.isclose(context(tokens, node_batch, moved), out).all(dim=-1)
    assert changed.tolist() == [True, True, True, False]
    other = tokens.clone()
    other[2] += 1.0  # region 2 looks different: its neighbours' contexts change, its own does not
    changed = ~torch.isclose(context(other, node_batch, geometry), out).all(dim=-1)
    assert changed.tolist() == [True, True, False, False]


@pytest.mark.parametrize("mode", ["gates", "bins"])
@pytest.mark.parametrize("node_batch", [[0, 1, 2], [0], []], ids=["one region each", "one region", "no region"])
def test_spatial_context_of_a_batch_without_a_pair_of_regions_is_empty(mode, node_batch):
    """A single real photo often has one region or none: no pair in the batch, nothing to gather."""
    context = SpatialContext(h=8, directions=4, mode=mode)
    out = context(torch.randn(len(node_batch), 8), torch.tensor(node_batch, dtype=torch.long),
                  torch.rand(len(node_batch), 5))
    assert out.shape == (len(node_batch), 8)
    torch.testing.assert_close(out, context.out.bias.expand_as(out))


def test_spatial_context_reaches_the_prefix_and_trains(tiny_language):
    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, spatial_directions=4)
    batch = collate(synthetic_items(n=3, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    assert {"spatial_context.gates.0.weight", "spatial_context.message.weight", "spatial_context.out.weight"} <= \
        changed_by_one_step(model.train(), batch)


def test_spatial_tokens_keep_each_region_s_own_token_free_of_its_context(tiny_language):
    added = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, spatial_directions=4).eval()
    apart = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4, spatial_directions=4,
                   spatial_tokens=True).eval()  # the same weights: no module is added
    plain = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=4).eval()
    batch = collate(synthetic_items(n=3, tokenizer=added.tokenizer), pad_id=added.tokenizer.pad_token_id)
    prefix = apart.prefix(batch)
    assert apart.prefix_tokens == prefix.embeddings.shape[1] == 3 + 2 * 4
    own, around = prefix.embeddings[:, 3:7], prefix.embeddings[:, 7:]
    torch.testing.assert_close(own, plain.prefix(batch).embeddings[:, 3:])  # identity only
    torch.testing.assert_close(own + around, added.prefix(batch).embeddings[:, 3:] + apart.region_tokens.empty
                               * (prefix.region_slots[:, 4:] < 0)[..., None])  # empty slots hold "no region" twice
    assert torch.equal(prefix.region_slots[:, :4], prefix.region_slots[:, 4:])  # a node fills both of its slots
    with pytest.raises(ValueError, match="model.spatial_tokens needs model.spatial_directions"):
        tiny_captioner(tiny_language, prefix_regions="tokens", spatial_tokens=True)


def test_top_down_context_tokens_are_ordered_by_height_and_hold_their_region(tiny_language):
    switches = dict(prefix_regions="tokens", region_tokens=4, spatial_directions=4, spatial_tokens=True,
                    region_order="position")
    same = tiny_captioner(tiny_language, **switches).eval()
    top_down = tiny_captioner(tiny_language, **switches, spatial_token_order="top_down").eval()  # the same weights
    batch = collate(synthetic_items(n=3, tokenizer=same.tokenizer), pad_id=same.tokenizer.pad_token_id)
    a, b = same.prefix(batch), top_down.prefix(batch)
    torch.testing.assert_close(b.embeddings[:, :7], a.embeddings[:, :7])  # the paper's prefix and own tokens
    own_slots, context_slots = b.region_slots[:, :4], b.region_slots[:, 4:]
    assert torch.equal(own_slots, a.region_slots[:, :4])
    for image in range(3):  # the same regions in both halves (image 2 has 7: the 4 kept), sorted by height
        nodes = context_slots[image][context_slots[image] >= 0]
        assert sorted(nodes.tolist()) == sorted(own_slots[image][own_slots[image] >= 0].tolist())
        heights = batch.geometry[nodes, 1]
        assert torch.equal(heights, heights.sort().values)
        for slot, node in enumerate(context_slots[image].tolist()):  # each context token: own token + context
            if node >= 0:
                own = a.embeddings[image, 3 + own_slots[image].tolist().index(node)]
                context = a.embeddings[image, 7 + own_slots[image].tolist().index(node)]
                torch.testing.assert_close(b.embeddings[image, 7 + slot], own + context)
    with pytest.raises(ValueError, match="model.spatial_token_order: unknown 'left_right'"):
        tiny_captioner(tiny_language, **switches, spatial_token_order="left_right")


def _moved(batch: dict, node: int, dx: float) -> dict:
    geometry = batch.geometry.clone()
    geometry[node, 0] += dx
    return replace(batch, geometry=geometry)


def test_positions_reach_the_prefix_only_through_geometry_switches(tiny_language):
    batch = collate(synthetic_items(n=3), pad_id=0)
    plain = tiny_captioner(tiny_language).eval()
    torch.testing.assert_close(plain.prefix(_moved(batch, 0, 0.2)).embeddings, plain.prefix(batch).embeddings)
    for switches in ({"box_embedding": True}, {"edge_geometry": True}):
        model = tiny_captioner(tiny_language, **switches).eval()
        assert not torch.allclose(model.prefix(_moved(batch, 0, 0.2)).embeddings, model.prefix(batch).embeddings)


def test_geometry_and_token_parameters_train(tiny_language):
    model = tiny_captioner(tiny_language, prefix_regions="tokens", box_embedding=True, edge_geometry=True)
    batch = collate(synthetic_items(n=3, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    changed = changed_by_one_step(model.train(), batch)
    assert {"box_embedding.project.weight", "region_tokens.empty", "region_tokens.project.0.weight"} <= changed
    assert any(n.startswith("gat.convs.0.lin_edge") for n in changed)  # the edge attributes reach the GAT


@pytest.mark.parametrize("switches, message", [
    ({"prefix_regions": "grid"}, "model.prefix_regions: unknown 'grid'"),
    ({"regions": False, "gat": False, "box_embedding": True}, "need model.regions"),
    ({"gat": False, "edge_geometry": True}, "model.edge_geometry needs model.gat"),
    ({"prefix_regions": "tokens", "region_tokens": 0}, "model.region_tokens: 0"),
    ({"spatial_directions": 4}, "model.spatial_directions: 4 needs prefix_regions tokens"),
])
def test_bad_region_switches_are_refused(tiny_language, switches, message):
    with pytest.raises(ValueError, match=message):
        tiny_captioner(tiny_language, **switches)


def test_store_boxes_reach_the_batch(tmp_path):
    """collate turns each item's pixel boxes and image size into the (V, 5) geometry."""
    items = synthetic_items(n=2)
    batch = collate(items, pad_id=0)
    boxes = np.concatenate([it["boxes"] for it in items])
    assert batch.geometry.shape == (len(boxes), 5)
    torch.testing.assert_close(batch.geometry[:, 2], torch.from_numpy((boxes[:, 2] - boxes[:, 0]) / 128))


def test_region_features_are_the_detector_s_the_crops_clip_or_both(tiny_language):
    from tests.helpers import D_CLIP, D_REGION, OBJECTS, SCENES
    from train.config import ModelConfig
    from train.model import Captioner, FeatureDims, load_gpt2

    rng = np.random.default_rng(0)
    items = synthetic_items(n=3)
    for item in items:
        item["region_clip"] = rng.normal(size=(len(item["features"]), 12)).astype(np.float32)
    batch = collate(items, pad_id=0)
    assert batch.region_clip.shape == (len(batch.region_features), 12)
    gpt2, tokenizer = load_gpt2(str(tiny_language))
    for choice, width in (("clip", 12), ("both", D_REGION + 12)):
        cfg = ModelConfig(gpt2=str(tiny_language), gat_hidden=8, gat_heads=2, prefix_length=3, region_features=choice)
        dims = FeatureDims(clip=D_CLIP, region=width, scene_bank=SCENES, object_bank=OBJECTS)
        model = Captioner(cfg, dims, gpt2, tokenizer, torch.randn(SCENES, D_CLIP), torch.randn(OBJECTS, D_CLIP)).eval()
        assert cfg.reads_region_clip
        prefix = model.prefix(batch).embeddings
        no_detector = replace(batch, region_features=torch.full_like(batch.region_features, float("nan")))
        assert torch.isfinite(model.prefix(no_detector).embeddings).all() == (choice == "clip")
        other_crops = replace(batch, region_clip=batch.region_clip + 1)
        assert not torch.allclose(model.prefix(other_crops).embeddings, prefix)
    assert not ModelConfig().reads_region_clip
    with pytest.raises(ValueError, match="model.region_features: unknown 'pixels'"):
        tiny_captioner(tiny_language, region_features="pixels")


def test_prefix_and_caption_must_fit_gpt2_s_positions(tiny_language):
    from train.config import TrainConfig
    from train.trainer import check_mode

    model = tiny_captioner(tiny_language, prefix_regions="tokens", region_tokens=30)  # the tiny GPT-2 has 64 positions
    check_mode(model, TrainConfig(max_tokens=31))
    assert model.prefix_tokens == 3 + 30
    with pytest.raises(ValueError, match="train.max_tokens = 65 exceeds"):
        check_mode(model, TrainConfig(max_tokens=32))
