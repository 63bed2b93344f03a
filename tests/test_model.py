"""The captioner on small synthetic batches: shapes, gradients, ablation switches, decoding, save/load."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers import D_CLIP, D_REGION, SCENES, changed_by_one_step, synthetic_items, tiny_captioner
from train.config import DecodeConfig, LossConfig
from train.data import collate, graph_edges
from train.decode import decode
from train.guidance import GraphKeywords
from train.losses import total_loss
from train.model import load_captioner


def test_graph_edges_are_symmetric_and_unique():
    neighbors = np.array([[1, 2], [0, -1], [-1, -1]])
    weights = np.array([[0.9, 0.4], [0.9, 0.0], [0.0, 0.0]], np.float32)
    edges, w = graph_edges(neighbors, weights)
    pairs = {(int(s), int(t)): float(x) for (s, t), x in zip(edges.T, w)}
    assert pairs == pytest.approx({(1, 0): 0.9, (0, 1): 0.9, (2, 0): 0.4, (0, 2): 0.4})


def test_collate_offsets_graphs(tiny_language):
    batch = collate(synthetic_items())
    assert batch.region_features.shape == (12, D_REGION) and batch.node_batch.tolist() == [0] * 4 + [1] + [2] * 7
    assert batch.edge_index.max() < 12 and batch.keyword_ids.shape == (3, 7, 2)
    assert (batch.keyword_ids[1, 1:] == -1).all()  # padding has no keyword
    src, dst = batch.edge_index
    assert (batch.node_batch[src] == batch.node_batch[dst]).all()  # no edge crosses images


def test_prefix_shapes_and_every_parameter_gets_a_gradient(tiny_language):
    model = tiny_captioner(tiny_language)
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    prefix = model.prefix(batch)
    assert prefix.embeddings.shape == (3, 3, model.gpt2.config.n_embd)
    assert prefix.fused.shape == prefix.gate.shape == (3, D_CLIP) and prefix.scene_attention.shape == (3, SCENES)
    parts = total_loss(model, batch, LossConfig(align="infonce"))
    parts["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing


@pytest.mark.parametrize("switch, module", [("gat", "gat"), ("global_guidance", "global_guidance"),
                                            ("local_guidance", "local_guidance")])
def test_ablation_switches_remove_their_module(tiny_language, switch, module):
    full, ablated = tiny_captioner(tiny_language), tiny_captioner(tiny_language, **{switch: False})
    assert getattr(full, module) is not None and getattr(ablated, module) is None
    assert not any(n.startswith(module + ".") for n, _ in ablated.named_parameters())
    batch = collate(synthetic_items(tokenizer=ablated.tokenizer))
    assert ablated.prefix(batch).embeddings.shape == (3, 3, ablated.gpt2.config.n_embd)
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())


def test_overfits_a_handful_of_samples(tiny_language):
    model = tiny_captioner(tiny_language)
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = total_loss(model, batch, LossConfig())["gen"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 < first
    model.eval()
    for method in ("greedy", "beam", "hybrid"):
        assert decode(model, batch, DecodeConfig(method=method, beam_size=3, greedy_tokens=2)) == [
            "a red circle on the beach"] * 3


def test_save_and_load_give_the_same_prefix(tiny_language, tmp_path):
    model = tiny_captioner(tiny_language).eval()
    model.save(tmp_path / "captioner", extra={"note": 1})
    loaded, config = load_captioner(tmp_path / "captioner")
    batch = collate(synthetic_items())
    torch.testing.assert_close(loaded.prefix(batch).embeddings, model.prefix(batch).embeddings)
    assert config["note"] == 1 and config["model"]["prefix_length"] == 3


def test_transformer_mapper_replaces_the_mlp(tiny_language):
    model = tiny_captioner(tiny_language, mapping="transformer", mapping_layers=2, mapping_clip_length=4)
    assert type(model.mapping).__name__ == "TransformerMapper"
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    assert model.prefix(batch).embeddings.shape == (3, 3, model.gpt2.config.n_embd)
    total_loss(model, batch, LossConfig())["total"].backward()
    assert model.mapping.constants.grad is not None and model.mapping.project.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="model.mapping"):
        tiny_captioner(tiny_language, mapping="lstm")


def test_phase_one_freezes_gpt2_and_trains_the_rest(tiny_language):
    from train.trainer import Phase, set_phase

    model = tiny_captioner(tiny_language)
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    names = {n for n, _ in model.named_parameters()}
    for phase in (Phase.MAPPING, Phase.FULL):
        set_phase(model, phase)
        changed = changed_by_one_step(model, batch)
        gpt2 = {n for n in names if n.startswith("gpt2.")}
        assert (changed & gpt2 == set()) if phase is Phase.MAPPING else gpt2 <= changed | {"gpt2.lm_head.weight"}
        assert names - gpt2 <= changed  # everything outside GPT-2 trains in both phases


def test_search_matches_transformers_generate(tiny_language):
    """Our one-pass KV-cache search against transformers' generate: greedy, and beam search
    when no caption ends early (where both keep exactly the k best continuations)."""
    from train.decode import search

    model = tiny_captioner(tiny_language).eval()
    embeds = model.prefix(collate(synthetic_items(n=6))).embeddings
    tok = model.tokenizer
    for beams, ngram in ((1, 0), (3, 0), (1, 2), (3, 2), (1, 1)):
        cfg = DecodeConfig(max_tokens=8, no_repeat_ngram_size=ngram)
        ours = search(model, embeds, cfg, 8 if beams == 1 else 0, beams)[0][:, 0]  # the best beam
        theirs = model.gpt2.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                     max_new_tokens=8, num_beams=beams, do_sample=False, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, no_repeat_ngram_size=ngram)
        assert ours.tolist() == theirs.tolist(), (beams, ngram)
    unbanned = search(model, embeds, DecodeConfig(max_tokens=8), 8, 1)[0][:, 0].tolist()
    assert any(len(set(zip(ids, ids[1:]))) < len(ids) - 1 for ids in unbanned)  # the random model repeats itself
    hybrid, scores = search(model, embeds, DecodeConfig(max_tokens=8), 8, 3)  # all greedy steps: the greedy result
    assert hybrid.tolist() == search(model, embeds, DecodeConfig(max_tokens=8), 8, 1)[0].tolist()
    beams, scores = search(model, embeds, DecodeConfig(max_tokens=8), 0, 3)
    assert beams.shape[:2] == (6, 3) and bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first


def test_top_p_filter_is_transformers_rule():
    from transformers.generation.logits_process import TopPLogitsWarper

    from train.decode import top_p_filter

    torch.manual_seed(0)
    logits = torch.randn(5, 50) * 3
    for top_p in (0.1, 0.5, 0.8, 0.95):
        ours = top_p_filter(logits, top_p)
        theirs = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(ours.isinf(), theirs.isinf()) and bool((ours.isinf().sum(-1) < 50).all()), top_p
    assert (top_p_filter(logits, 0.8).isinf().sum(-1) > 0).all()  # it does cut (the test can fail)
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_sampling_matches_transformers_generate_under_one_seed(tiny_language):
    """Top-p sampling draws as generate(do_sample=True, top_p, temperature) does: same seed, same tokens."""
    from train.decode import sample

    model = tiny_captioner(tiny_language).eval()
    embeds = model.prefix(collate(synthetic_items(n=6))).embeddings.detach()
    tok = model.tokenizer
    for top_p, temperature in ((0.8, 1.0), (0.5, 0.7)):
        torch.manual_seed(3)
        ours = sample(model, embeds, 8, top_p, temperature)
        torch.manual_seed(3)
        theirs = model.gpt2.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                     max_new_tokens=8, do_sample=True, top_p=top_p, top_k=0, temperature=temperature,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        assert ours.tolist() == theirs[:, :ours.shape[1]].tolist(), top_p
    batch = collate(synthetic_items(n=6))
    captions = {tuple(decode(model, batch, DecodeConfig(method="sample", max_tokens=8))) for _ in range(3)}
    assert len(captions) > 1  # sampling varies from draw to draw
    with pytest.raises(ValueError, match="top_p"):
        decode(model, batch, DecodeConfig(method="sample", top_p=0.0))


def test_clip_prefix_model_has_no_region_branch(tiny_language):
    model = tiny_captioner(tiny_language, regions=False, gat=False, global_guidance=False, local_guidance=False)
    assert model.fuse is None and model.gat is None
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    prefix = model.prefix(batch)
    torch.testing.assert_close(prefix.fused, batch.clip)  # ClipCap: the mapper reads CLIP directly
    batch.region_features = torch.full_like(batch.region_features, float("nan"))  # regions are never read
    assert torch.isfinite(model.prefix(batch).embeddings).all()
    with pytest.raises(ValueError, match="model.gat needs model.regions"):
        tiny_captioner(tiny_language, regions=False)


@pytest.mark.parametrize("overrides", [{"region_adapter": True}, {"local_text": "graph"},
                                       {"region_adapter": True, "local_text": "graph", "prefix_regions": "tokens",
                                        "region_token_skip": True}])
def test_adapter_and_graph_keywords_train_and_reload(tiny_language, tmp_path, overrides):
    model = tiny_captioner(tiny_language, **overrides)
    batch = collate(synthetic_items(tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    if overrides.get("region_adapter"):  # the paper's CrossModal_Adapter: regions enter the GAT at CLIP's width
        assert (model.adapter.in_features, model.adapter.out_features) == (D_REGION, D_CLIP)
    total_loss(model, batch, LossConfig())["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    model.eval().save(tmp_path / "captioner")
    torch.testing.assert_close(load_captioner(tmp_path / "captioner")[0].prefix(batch).embeddings,
                               model.prefix(batch).embeddings)


def test_graph_keywords_come_from_the_nodes_not_the_stored_keywords(tiny_language):
    graph, stored = tiny_captioner(tiny_language, local_text="graph").eval(), tiny_captioner(tiny_language).eval()
    batch = collate(synthetic_items(tokenizer=graph.tokenizer))
    other = replace(batch, keyword_ids=batch.keyword_ids.flip(0), keyword_scores=batch.keyword_scores.flip(0))
    prefix = graph.prefix(batch)
    assert prefix.local_attention.shape == (3, graph.dims.object_bank)
    torch.testing.assert_close(prefix.local_attention.sum(dim=-1), torch.ones(3))  # each image has regions
    torch.testing.assert_close(graph.prefix(other).embeddings, prefix.embeddings)  # stored keywords unread
    assert not torch.allclose(stored.prefix(other).embeddings, stored.prefix(batch).embeddings)
    moved = replace(batch, region_features=batch.region_features + torch.randn_like(batch.region_features))
    assert not torch.allclose(graph.prefix(moved).local_attention, prefix.local_attention)  # nodes → keywords


def test_graph_keywords_of_an_image_without_regions_are_zero():
    torch.manual_seed(0)
    module = GraphKeywords(4, torch.randn(5, 3))
    text, attention = module(torch.randn(2, 4), torch.tensor([0, 0]), n_images=2)  # image 1: no region
    assert text.shape == (2, 3) and attention[1].abs().sum() == 0 and text[1].abs().sum() == 0
    torch.testing.assert_close(attention[0].sum(), torch.tensor(1.0))
