"""How long does the CIDEr-D reward (train.cider) take per SCST batch on the CPU? A made-up corpus
of Zipf-distributed words stands for the training captions; each step scores ``samples``
candidates per image (reference words with some replaced, as sampled captions are) against that
image's references, first with its reference vectors still to be built (an epoch's first visit),
then from the cache.

    python benchmarks/cider_reward.py [--images 5000] [--refs 5] [--batch 64] [--samples 5] [--steps 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.cider import CiderD  # noqa: E402


def made_up_captions(rng: np.random.Generator, vocab: int, count: int) -> list[str]:
    """Captions of 8 to 14 words drawn from a Zipf-like distribution over ``vocab`` words."""
    p = 1.0 / np.arange(1, vocab + 1)
    words = rng.choice(vocab, size=count * 14, p=p / p.sum())
    lengths = rng.integers(8, 15, size=count)
    return [" ".join(f"w{w}" for w in words[i * 14:i * 14 + n]) for i, n in enumerate(lengths)]


def sampled_like(rng: np.random.Generator, ref: str, vocab: int) -> str:
    """A reference with about a third of its words replaced by random ones."""
    words = ref.split()
    return " ".join(f"w{rng.integers(vocab)}" if rng.random() < 0.33 else w for w in words)


def time_steps(cider: CiderD, refs: list[list[str]], rng: np.random.Generator, args: argparse.Namespace,
               images: np.ndarray) -> list[float]:
    """Milliseconds of each step's ``scores_by_id`` over ``args.batch`` images of ``images``."""
    times = []
    for step in range(args.steps):
        ids = [int(i) for i in images[step * args.batch:(step + 1) * args.batch] for _ in range(args.samples)]
        cands = [sampled_like(rng, refs[i][rng.integers(len(refs[i]))], args.vocab) for i in ids]
        start = time.perf_counter()
        cider.scores_by_id(cands, ids)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    flat = made_up_captions(rng, args.vocab, args.images * args.refs)
    refs = [flat[i * args.refs:(i + 1) * args.refs] for i in range(args.images)]
    start = time.perf_counter()
    cider = CiderD.from_corpus(refs)
    print(f"df over {args.images} images x {args.refs} refs: {time.perf_counter() - start:.2f} s, "
          f"{len(cider.document_frequency)} n-grams")
    images = rng.permutation(args.images)[:args.steps * args.batch]
    size = f"{args.batch} images x {args.samples} samples vs {args.refs} refs"
    for label in ("cold (refs not cached)", "warm (refs cached)"):
        times = time_steps(cider, refs, rng, args, images)
        print(f"{size}, {label}: median {statistics.median(times):.2f} ms, "
              f"min {min(times):.2f} ms per batch over {args.steps} steps")


if __name__ == "__main__":
    main()
