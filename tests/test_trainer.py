"""The trainer: a run killed between epochs resumes from its checkpoint and ends exactly where an
uninterrupted run ends; a checkpoint of another configuration is ignored."""
import json
from dataclasses import replace

import pytest
import torch

from tests.helpers import synthetic_items, tiny_captioner
from train import trainer
from train.config import LossConfig, TrainConfig
from train.data import collate
from train.trainer import train


class Killed(RuntimeError):
    pass


def _run(tiny_language, folder, kill_at_epoch=None, fingerprint="a", precision="fp32"):
    model = tiny_captioner(tiny_language)
    data = synthetic_items(n=6, tokenizer=model.tokenizer)
    calls = []

    def scorer(m):
        calls.append(1)
        if len(calls) == kill_at_epoch:
            raise Killed  # as if the process died during this epoch's validation
        return {"score": -float(m.fuse.weight.detach().abs().sum())}

    cfg = TrainConfig(phase1_epochs=1, phase2_epochs=2, lr=3e-3, batch_size=4, seed=3, loss=LossConfig(),
                      precision=precision)
    best = train(model, data, cfg, folder / "model", folder / "live", scorer, "score", torch.device("cpu"),
                 checkpoint=folder / "ckpt.pt", fingerprint=fingerprint)
    return model, best


def test_resumed_run_equals_uninterrupted(tiny_language, tmp_path):
    whole, best_whole = _run(tiny_language, tmp_path / "whole")
    with pytest.raises(Killed):
        _run(tiny_language, tmp_path / "killed", kill_at_epoch=2)
    resumed, best_resumed = _run(tiny_language, tmp_path / "killed")
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert best_whole == best_resumed
    assert not (tmp_path / "killed/ckpt.pt").exists()  # a finished run leaves no checkpoint to resume
    for curve in ("val/score", "train/loss_total", "train/lr"):  # one row per epoch, none twice
        rows = (tmp_path / f"killed/live/plots/metrics/{curve}.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step", "0", "1", "2"], curve
    assert json.loads((tmp_path / "killed/live/metrics.json").read_text())["step"] == 2


def test_killed_after_logging_an_epoch_before_its_checkpoint(tiny_language, tmp_path, monkeypatch):
    """The epoch is redone on resume, and its curve rows are not logged twice."""
    real_save, saves = trainer.save_checkpoint, []

    def dies_at_the_second_checkpoint(path, state):
        saves.append(1)
        if len(saves) == 2:
            raise Killed  # epoch 1 is logged, its checkpoint never written
        real_save(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", dies_at_the_second_checkpoint)
    with pytest.raises(Killed):
        _run(tiny_language, tmp_path)
    rows = (tmp_path / "live/plots/metrics/train/lr.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["step", "0", "1"]  # the window this test is about
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    _run(tiny_language, tmp_path)
    for curve in ("val/score", "train/loss_total", "train/lr"):
        rows = (tmp_path / f"live/plots/metrics/{curve}.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step", "0", "1", "2"], curve


def test_checkpoint_of_another_configuration_is_ignored(tiny_language, tmp_path):
    with pytest.raises(Killed):
        _run(tiny_language, tmp_path, kill_at_epoch=3)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(Killed):  # another configuration starts afresh and overwrites the checkpoint
        _run(tiny_language, tmp_path, kill_at_epoch=2, fingerprint="b")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert (state["fingerprint"], state["epoch"]) == ("b", 0)


def test_bf16_autocast_trains(tiny_language, tmp_path):
    model, best = _run(tiny_language, tmp_path, precision="bf16")
    assert best["epoch"] in (0, 1, 2) and all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="train.precision: fp16 runs on CUDA only"):
        _run(tiny_language, tmp_path / "fp16", precision="fp16")


def test_text_only_training_never_sees_the_image(tiny_language):
    from train.trainer import Objective, check_mode

    model = tiny_captioner(tiny_language, regions=False, gat=False, global_guidance=False, local_guidance=False,
                   normalize_clip=True)
    cfg = TrainConfig(mode="text_only", text_noise=0.016)
    batch = collate(synthetic_items(n=4, tokenizer=model.tokenizer), pad_id=model.tokenizer.pad_token_id)
    losses = []
    for clip in (batch.clip, torch.randn_like(batch.clip) * 100):  # any image embedding at all
        torch.manual_seed(0)
        losses.append(Objective(model, cfg)(replace(batch, clip=clip))["total"].item())
    assert losses[0] == losses[1]
    torch.manual_seed(0)
    assert Objective(model, TrainConfig())(batch)["total"].item() != losses[0]  # supervised mode does read it
    with pytest.raises(ValueError, match="text_only trains without images"):
        check_mode(tiny_captioner(tiny_language), cfg)
    with pytest.raises(ValueError, match="train.mode: unknown 'rl'"):
        check_mode(model, TrainConfig(mode="rl"))


def test_a_nan_feature_stops_training_naming_the_images_and_writes_no_model(tiny_language, tmp_path):
    model = tiny_captioner(tiny_language)
    data = synthetic_items(n=6, tokenizer=model.tokenizer)
    data[4]["clip"][0] = float("nan")
    cfg = TrainConfig(phase1_epochs=1, phase2_epochs=1, lr=3e-3, batch_size=8, seed=3, loss=LossConfig())
    with pytest.raises(trainer.NonFiniteError, match=r"epoch 0 \(phase 1\), step 0: loss nan with images .*\b4\b"):
        train(model, data, cfg, tmp_path / "model", tmp_path / "live", lambda m: {"score": 0.0}, "score",
              torch.device("cpu"))
    assert not (tmp_path / "model").exists()
    assert all(p.isfinite().all() for p in model.parameters())  # the optimizer never stepped on it
