"""A resumable, sharded stream of sample keys.

The global stream is an endless sequence of epochs, each a permutation of the dataset drawn from
(seed, epoch). Global micro-batch k covers stream positions [k·B·W, (k+1)·B·W) for batch size B
and W processes, counted from the position the run started at; process r takes the r-th B of
each. So the processes see disjoint samples, together the whole dataset once per epoch, and the
position in the stream — one integer, saved in checkpoints — is all a resume needs to continue
the order of the samples (with another batch size or process count too).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ShardedStream"]


class ShardedStream(Sampler):
    """Yields ``(epoch, index)`` keys for one process, from global position ``start`` on."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
    ):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start
        self._orders: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices of ``epoch`` in stream order."""
        if epoch not in self._orders:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._orders = {epoch: rng.permutation(self.num_samples)}  # keep one epoch
            else:
                self._orders = {epoch: np.arange(self.num_samples)}
        return self._orders[epoch]

    def key_at(self, position: int) -> tuple[int, int]:
        """Global stream position → ``(epoch, dataset index)``."""
        epoch, offset = divmod(position, self.num_samples)
        return epoch, int(self.order(epoch)[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        while True:
            first = position + self.rank * self.batch_size
            for j in range(self.batch_size):
                yield self.key_at(first + j)
            position += self.global_batch

    def __len__(self) -> int:  # endless; DataLoader only needs a number for its progress
        return 2**62
