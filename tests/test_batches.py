"""The epoch's batches: a full shuffle over few shards, a block shuffle over many (so the shards
of a batch stay in the readers' open-file cache), the same for every rank and on resume."""
import numpy as np
import torch

from train.distributed import GlobalBatches, World

SHARD_SIZE, WINDOW = 10, 4


def _epoch(n_shards: int, seed: int = 0, epoch: int = 0, world: World = World()) -> list[list[int]]:
    item_shards = np.arange(n_shards * 3 * SHARD_SIZE) // (3 * SHARD_SIZE)  # 3 captions per image
    return list(GlobalBatches(len(item_shards), 8, seed, epoch, world, item_shards, window=WINDOW))


def test_few_shards_give_the_plain_full_shuffle():
    plain = list(GlobalBatches(4 * 3 * SHARD_SIZE, 8, 0, 0, World()))
    assert _epoch(n_shards=WINDOW) == plain  # the demo's batches are unchanged by shard awareness


def test_many_shards_each_batch_reads_at_most_two_windows_of_shards():
    n_shards = 25
    batches = _epoch(n_shards)
    items = [i for batch in batches for i in batch]
    assert sorted(items) == list(range(n_shards * 3 * SHARD_SIZE))  # every pair once per epoch
    shards_per_batch = [len({i // (3 * SHARD_SIZE) for i in batch}) for batch in batches]
    assert max(shards_per_batch) <= 2 * WINDOW
    assert np.mean(shards_per_batch) > 3  # still mixed across shards, not one shard per batch
    first_window = {i // (3 * SHARD_SIZE) for batch in batches[:5] for i in batch}
    assert first_window != set(range(WINDOW))  # the shard order is shuffled too


def test_block_shuffle_depends_on_seed_and_epoch_only_and_ranks_share_it():
    assert _epoch(25) == _epoch(25)
    assert _epoch(25) != _epoch(25, epoch=1) != _epoch(25, seed=1)
    ranks = [_epoch(25, world=World(rank, 2)) for rank in range(2)]
    assert [a + b for a, b in zip(*ranks)] == _epoch(25)


def test_windows_leave_no_pair_out_when_shards_are_uneven():
    item_shards = np.array([0] * 5 + [1] * 50 + [2] * 1 + [3] * 7 + [4] * 20 + [5] * 3)
    batches = list(GlobalBatches(len(item_shards), 16, 2, 0, World(), item_shards, window=2))
    assert sorted(i for b in batches for i in b) == list(range(len(item_shards)))
    assert torch.tensor([len(b) for b in batches]).sum() == len(item_shards)
