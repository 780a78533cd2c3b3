"""Which samples each optimiser step sees: a pure function of (seed, epoch, rank), so a resumed run replays the
exact same batches as an uninterrupted one without storing any sampler state.

Each epoch is a seeded permutation (optionally weighted, for class-balanced sampling), padded to a multiple of
the world size and dealt round-robin to the ranks, as `torch.utils.data.DistributedSampler` does. Items are
``(index, epoch)`` pairs so datasets can seed their augmentation by sample and epoch, independently of worker
processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from neuroldm.errors import NeuroLDMError


class BatchPlan:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: Sequence[float] | None = None):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.per_rank = -(-n // world_size)  # ceil
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            raise NeuroLDMError(f"{n} training samples are too few for batch size {batch_size} on "
                                f"{world_size} process(es); lower train.batch_size")

    def epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:  # class-balanced: draw with replacement in proportion to the weights
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        order = order.tolist()
        order += order[: self.per_rank * self.world_size - self.n]  # pad so every rank gets the same count
        return order[self.rank:: self.world_size]

    def batches_from(self, step: int) -> Iterator[list[tuple[int, int]]]:
        """Batches for optimiser micro-steps ``step, step + 1, ...`` (endless, epoch after epoch)."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        while True:
            idx = self.epoch_indices(epoch)
            for b in range(offset, self.steps_per_epoch):
                yield [(i, epoch) for i in idx[b * self.batch_size:(b + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0
