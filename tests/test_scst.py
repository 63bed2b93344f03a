"""Self-critical training with the CIDEr-D reward: the reward is pycocoevalcap's CIDEr-D of each
caption against its image's references, and one SCST step moves the policy toward the samples
that beat their baseline."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from tests.helpers import synthetic_items, tiny_captioner
from train.config import TrainConfig
from train.data import collate
from train.decode import sample, texts_of
from train.scst import CiderReward, SelfCritical
from train.trainer import SelfCriticalStage, check_mode, train

REFERENCES = [["a red circle on the beach", "a red circle near the sea", "the beach has a red circle"],
              ["two blue squares in a park", "blue squares on the grass", "a park with two blue squares"],
              ["a green triangle above a yellow star", "a yellow star under a green triangle"],
              ["an empty street at night", "a street with no people at night", "a dark street"]]
IMAGES = [10, 11, 12, 13]  # manifest indices of the references above


def test_cider_reward_is_pycocoevalcaps_cider_d():
    captions = ["a red circle on the sand", "two squares in a park", "a green triangle above a yellow star",
                "a cat"]
    pycoco = CiderScorer(n=4, sigma=6.0)
    for caption, refs in zip(captions, REFERENCES):
        pycoco += (caption, refs)
    _, expected = pycoco.compute_score()  # document frequencies from these references, as ours
    reward = CiderReward(IMAGES, REFERENCES)
    batch = replace(collate(synthetic_items(n=4)), index=torch.tensor([12, 10, 13, 11]))  # another order than the corpus
    order = [2, 0, 3, 1]
    got = reward(batch, [captions[k] for k in order], 1)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected)[order], rtol=1e-6, atol=1e-6)
    assert got[0] > got[2]  # the exact caption beats "a cat" (the test can fail)
    twice = reward(batch, [captions[k] for k in order for _ in range(2)], 2)  # two samples per image
    np.testing.assert_allclose(twice.numpy(), np.repeat(got.numpy(), 2), rtol=1e-6)


def test_one_scst_step_moves_the_policy_toward_the_rewarded_sample(tiny_language):
    model = tiny_captioner(tiny_language).train()
    batch = replace(collate(synthetic_items(n=1)), index=torch.tensor([IMAGES[0]]))
    embeds = model.prefix(batch).embeddings.detach()
    torch.manual_seed(0)
    with torch.no_grad():  # what the rollout below will draw: the same seed, the same model
        model.eval()
        drawn = texts_of(model, sample(model, embeds.repeat_interleave(4, dim=0), 8))
        model.train()
    assert len(set(drawn)) > 1
    # the first sample is the reference: it alone earns a high reward
    reward = CiderReward(IMAGES, [[drawn[0]] * 3] + REFERENCES[1:])
    objective = SelfCritical(model, reward, max_tokens=8, samples=4, baseline="mean")
    torch.manual_seed(0)
    sampled, rewards, baselines = objective.rollout(batch, embeds)
    assert texts_of(model, sampled) == drawn and rewards[0] > rewards[1:].max()
    advantage = rewards - baselines  # mean of the other samples: sums to 0 over the image
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = objective.log_prob(model.prefix(batch).embeddings, sampled).detach()
    loss = -(advantage * objective.log_prob(model.prefix(batch).embeddings, sampled)).mean()
    loss.backward()
    optimizer.step()
    after = objective.log_prob(model.prefix(batch).embeddings, sampled).detach()
    assert after[0] > before[0]  # the rewarded caption became more likely...
    assert (advantage * (after - before)).sum() > 0  # ... and the policy moved along the advantage


def test_the_scst_epochs_train_on_the_labelled_images_with_the_cider_reward(tiny_language, tmp_path):
    model = tiny_captioner(tiny_language)
    items = synthetic_items(n=4, tokenizer=model.tokenizer)
    images = [{**{k: v for k, v in item.items() if k not in ("tokens", "text")}, "index": index}
              for item, index in zip(items, IMAGES)]
    scores = iter([1.0, 2.0, 1.5])
    cfg = TrainConfig(phase1_epochs=1, phase2_epochs=0, scst_epochs=2, batch_size=4, scst_samples=2,
                      scst_baseline="mean")
    best = train(model, items, cfg, tmp_path / "model", tmp_path / "live", lambda m: {"s": next(scores)}, "s",
                 torch.device("cpu"), scst=SelfCriticalStage(images, CiderReward(IMAGES, REFERENCES)))
    assert (best["epoch"], best["s"]) == (1, 2.0)  # the first SCST epoch: the SCST stage's best
    logged = (tmp_path / "live/plots/metrics/train/loss_reward_baseline.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in logged[1:]] == ["1", "2"]  # (step, value): the SCST epochs alone
    with pytest.raises(ValueError, match="needs at least 2"):
        check_mode(model, TrainConfig(scst_epochs=1, scst_baseline="mean"), SelfCriticalStage(images, None))
    with pytest.raises(ValueError, match="no images and reward"):
        check_mode(model, TrainConfig(scst_epochs=1))
