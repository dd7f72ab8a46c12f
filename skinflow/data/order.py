"""Training data order and augmentation that are pure functions of ``(seed, epoch, position)``.

Why: a run interrupted mid-epoch and resumed from its checkpoint must see the same images, augmented the same
way and asked the same prompts, as the run that was never interrupted. A stateful random stream cannot promise
that: Lightning prefetches the next batch before a checkpoint is written, so the stream's state in the file is
one batch ahead, and it is not saved at all. Here nothing carries over between items:

- :class:`EpochShuffle` draws epoch ``e``'s permutation from ``(seed, e)``; each rank takes every
  ``world_size``-th index of it (a ``DistributedSampler``, so Lightning does not wrap it), padded to equal length
  as ``DistributedSampler`` does. It yields ``(index, item_seed)`` with ``item_seed`` drawn from
  ``(seed, e, position)``, and can skip the positions already trained (:meth:`EpochShuffle.resume`).
- The DataModule saves the epoch and the number of batches the trainer has finished in it (its ``state_dict``)
  and hands them to the next sampler it builds; :class:`ResumableLoader` tells Lightning the loader resumes.
- :func:`reseed` seeds an albumentations pipeline for one item (each transform from its own stream, so a flip's
  draw does not decide the rotation's), and the collator draws a ``mixed`` prompt from the item's seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (numpy's ``SeedSequence``): nearby inputs give unrelated seeds.

    >>> derive_seed(0, 1) == derive_seed(0, 1), derive_seed(0, 1) == derive_seed(1, 0)
    (True, False)
    """
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def reseed(compose, seed: int) -> None:
    """Seed an albumentations ``Compose`` and each of its transforms from streams derived from ``seed``."""
    compose.set_random_seed(seed)
    for j, transform in enumerate(getattr(compose, "transforms", [])):
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(derive_seed(seed, j))


class EpochShuffle(DistributedSampler):
    """Shuffled ``(index, item_seed)`` pairs for one rank; epoch ``e``'s order depends on ``(seed, e)`` only."""

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        if size < 1:
            raise ValueError("EpochShuffle needs at least one item")
        # DistributedSampler's fields (num_replicas, rank, epoch, seed, num_samples, total_size), set without a
        # process group: the caller passes the world
        self.dataset, self.num_replicas, self.rank, self.seed = range(size), num_replicas, rank, seed
        self.epoch, self.drop_last, self.shuffle = 0, False, True
        self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def resume(self, epoch: int, skip: int) -> None:
        """The next pass over ``epoch`` starts after its first ``skip`` samples (of this rank)."""
        self._resume = (epoch, skip)

    def order(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(index, item_seed)`` pairs of ``epoch``, before any resume skip."""
        size = len(self.dataset)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch))).tolist()
        perm += perm[: self.total_size - size]  # pad as DistributedSampler does
        positions = range(self.rank, self.total_size, self.num_replicas)
        return [(perm[p], derive_seed(self.seed, epoch, p)) for p in positions]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pairs = self.order(self.epoch)
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                pairs = pairs[skip:]
        return iter(pairs)

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` over an :class:`EpochShuffle`, which Lightning counts as resumable mid-epoch.

    The position itself is saved and restored by ``Fitzpatrick17kDataModule.state_dict`` / ``load_state_dict``:
    Lightning builds the training loader before it restores loop state (to count the schedule's steps), so a
    state loaded into the loader would come after its first batch was drawn. The loader's own state (the order's
    seed) is for the record; the DataModule checks seed and process count when it restores the position."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochShuffle):
            raise TypeError("ResumableLoader needs an EpochShuffle sampler")

    def state_dict(self) -> dict:
        return {"seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        pass  # the DataModule restored the position before this loader was built


PADDING = "padding"  # the third element of an evaluation key that only keeps a rank in step


class EvenEvalShards(DistributedSampler):
    """Evaluation over several processes: rank r takes images r, r + W, r + 2W, ... (none twice, none left out),
    and, when another rank has one batch more, one padding key ``(0, None, "padding")`` as its own last batch.

    Every rank then runs the same number of evaluation batches. Under FSDP2 each forward and each ``generate`` is a
    collective, so a rank with a batch fewer would leave the others waiting; the stages run a padding batch and
    count nothing from it (``batch["padding"]``).

    >>> [list(EvenEvalShards(17, 2, r, batch_size=8)) for r in (0, 1)][1][-1]
    (0, None, 'padding')
    >>> [len(EvenEvalShards(17, 2, r, batch_size=8)) for r in (0, 1)], len(EvenEvalShards(18, 2, 1, batch_size=8))
    ([9, 9], 9)
    """

    def __init__(self, size: int, num_replicas: int, rank: int, batch_size: int):
        self.dataset, self.num_replicas, self.rank, self.epoch, self.seed, self.shuffle = range(size), num_replicas, rank, 0, 0, False
        self.drop_last = False
        self.indices = list(range(rank, size, num_replicas))
        batches = [math.ceil(len(range(r, size, num_replicas)) / batch_size) for r in range(num_replicas)]
        self.padding = (max(batches) - batches[rank]) if size else 0  # 0 or 1: counts differ by one image at most
        self.num_samples = self.total_size = len(self.indices) + self.padding

    def __iter__(self) -> Iterator:
        yield from self.indices
        for _ in range(self.padding):
            yield (0, None, PADDING)

    def __len__(self) -> int:
        return self.num_samples
