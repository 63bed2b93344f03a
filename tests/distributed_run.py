"""Trains the tiny captioner on synthetic items and saves the final weights and the logged
losses; run by tests/test_distributed.py both as a plain process and under torchrun.

    python tests/distributed_run.py <tiny gpt2 folder> <output folder>
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import synthetic_items, tiny_captioner  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.distributed import process_group  # noqa: E402
from train.trainer import train  # noqa: E402


def main() -> None:
    language, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)  # two processes share two cores
    device = torch.device("cpu")
    with process_group(device) as world:
        model = tiny_captioner(language, gat_dropout=0.0)
        for module in model.modules():  # dropout draws differ per rank; without it the runs can agree
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        data = synthetic_items(n=24, tokenizer=model.tokenizer)
        cfg = TrainConfig(phase1_epochs=1, phase2_epochs=2, lr=3e-3, batch_size=8, seed=3)
        best = train(model, data, cfg, out / "model", out / "live", lambda m: {"score": -float(m.fuse.weight.sum())},
                     "score", device, checkpoint=out / "ckpt.pt", fingerprint="f", world=world)
        if world.is_main:
            torch.save(model.state_dict(), out / "final.pt")
            (out / "best.json").write_text(json.dumps({**best, "world_size": world.size}))


if __name__ == "__main__":
    main()
