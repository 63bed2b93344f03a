"""What the store's checksums cost, side by side in one run on this machine:

    python benchmarks/checksums.py [--images 1000] [--batches 400]

Shards of the paper preset's regions kind (36 regions of 2048-d C5 features, float16, ~150 KB an
image) are written twice: as the store writes them (chunks of whole rows, Fletcher-32 checked
on every read) and contiguous without checksums (schema 1). Printed:
- random batched reads (64 rows of one shard, as the trainer's shard-aware batches read them):
  rows/s of each layout and their ratio;
- the other choice the design weighed, a digest per dataset checked on open: the time of one
  SHA-256 pass over a shard, against reading one batch from it;
- a stage's currency check (:func:`features.store.check_shard`, every byte read and checked).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.store import check_shard, open_shard, write_shard  # noqa: E402

N_REGIONS, DIM, BATCH = 36, 2048, 64


def shard_arrays(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A regions shard's datasets, every region real."""
    return {"features": rng.standard_normal((n, N_REGIONS, DIM)).astype(np.float16),
            "boxes": rng.uniform(0, 640, (n, N_REGIONS, 4)).astype(np.float32),
            "scores": rng.uniform(size=(n, N_REGIONS)).astype(np.float16),
            "labels": rng.integers(1, 91, (n, N_REGIONS)).astype(np.int32),
            "counts": np.full(n, N_REGIONS, np.int32), "image_sizes": np.full((n, 2), 640, np.int32)}


def write_unchecked(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)


def read_rate(path: Path, batches: list[np.ndarray], checked: bool) -> float:
    """Rows/s of random batched reads of 'features' (each batch: sorted rows of this shard), as
    the store reads them (Shard.read), or as the unchecked layout was read (one list selection)."""
    if checked:
        shard = open_shard(path, "regions", {})
        read = lambda rows: shard.read("features", rows)  # noqa: E731
    else:
        f = h5py.File(path, "r")
        read = f["features"].__getitem__
    start = time.perf_counter()
    for rows in batches:
        read(rows.tolist())
    elapsed = time.perf_counter() - start
    (shard if checked else f).close()
    return len(batches) * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    arrays = shard_arrays(args.images, rng)
    ids = [f"{i:012d}" for i in range(args.images)]
    batches = [np.sort(rng.choice(args.images, BATCH, replace=False)) for _ in range(args.batches)]
    with tempfile.TemporaryDirectory() as tmp:
        checked, unchecked = Path(tmp) / "checked.h5", Path(tmp) / "unchecked.h5"
        write_shard(checked, "regions", ids, arrays, {}, 0)
        write_unchecked(unchecked, arrays)
        print(f"shard: {args.images} images, {checked.stat().st_size / 2**20:.0f} MB checksummed, "
              f"{unchecked.stat().st_size / 2**20:.0f} MB unchecked")
        rates = {}
        for name, path in (("unchecked", unchecked), ("checked", checked)) * 2:  # twice: the second warm
            rates[name] = read_rate(path, batches, name == "checked")
        print(f"random batch reads: Fletcher-32 {rates['checked']:,.0f} rows/s, unchecked {rates['unchecked']:,.0f} "
              f"rows/s -> {rates['checked'] / rates['unchecked']:.1%}")
        start = time.perf_counter()
        with h5py.File(unchecked, "r") as f:
            for name in f:
                hashlib.sha256(f[name][()].tobytes()).hexdigest()
        digest = time.perf_counter() - start
        batch = BATCH / rates["unchecked"]
        print(f"a digest per dataset checked on open: {digest * 1000:.0f} ms a shard "
              f"= {digest / batch:.0f} batch reads ({batch * 1000:.1f} ms each)")
        shard = open_shard(checked, "regions", {})
        start = time.perf_counter()
        problems = check_shard(shard, "regions")
        shard.close()
        print(f"check_shard (a stage's currency check, every byte): {time.perf_counter() - start:.2f} s, "
              f"{len(problems)} problems")


if __name__ == "__main__":
    main()
