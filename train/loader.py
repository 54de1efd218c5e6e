"""Training batches: a torch `Dataset` over `mde.data.readers` samples with seeded augmentation, and per-epoch order.

Everything random is a function of (seed, epoch, index), so a resumed run (even mid-epoch,
with any number of workers) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mde.errors import MdeError
from mde.train.augment import augment_config, augment_pair, object_weights, to_training_pair
from mde.train.config import input_hw


class DepthPairs(Dataset):
    """Training items: (image, depth, loss weights, index), seeded and augmented.

    The image is 3 x H x W float in [0, 1] (`image_size` N, or (H, W)), depth 1 x H x W metres with 0 = invalid.
    The weights are 1 x H x W, `object_weight` on the object pixels of the sample's region mask
    and 1 elsewhere; with `object_weight` 1 they are an empty tensor, as nothing reads them.
    """

    def __init__(self, base: Any, image_size: int | tuple[int, int], augment: bool, seed: int,
                 scale_crop: bool = False, color_jitter: bool = False, object_weight: float = 1.0):
        self.base, self.size, self.augment, self.seed = base, input_hw(image_size), augment, seed
        self.augment_cfg = augment_config(scale_crop, color_jitter)
        self.object_weight = object_weight
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        sample = self.base[index]
        weighted = self.object_weight != 1
        mask = sample.mask if weighted else None  # masks only move when they weigh
        rgb, depth = sample.rgb, sample.depth
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            rgb, depth, mask = augment_pair(rgb, depth, rng, self.augment_cfg, mask)
        x, y = to_training_pair(rgb, depth, self.size)
        weights = object_weights(mask, self.size, self.object_weight) if weighted else np.empty(0, np.float32)
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(weights), index


def epoch_indices(n: int, epoch: int, seed: int, rank: int, world_size: int) -> list[int]:
    """This rank's shuffled share of `n` items for `epoch` (DistributedSampler, drop_last)."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def epoch_loader(pairs: DepthPairs, indices: list[int], batch_size: int, workers: int,
                 pin_memory: bool) -> DataLoader:
    """Batches over `indices` in order (full batches only)."""
    from mde.data.readers import quiet_image_notes  # workers start afresh each epoch: they would say them again

    return DataLoader(pairs, batch_size=batch_size, sampler=indices, drop_last=True,
                      num_workers=workers, pin_memory=pin_memory, worker_init_fn=quiet_image_notes if workers else None,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate `loader`; an `MdeError` from a worker process keeps its own one-line message.

    torch re-raises a worker's exception as the same type with the worker's traceback as
    its message; the original message is that traceback's last line.
    """
    try:
        yield from loader
    except MdeError as err:
        lines = str(err).strip().splitlines()
        if len(lines) > 1 and "Traceback" in str(err):
            raise type(err)(lines[-1].split(": ", 1)[-1]) from None
        raise
    except RuntimeError as err:
        death = worker_death(err)
        if death is None:
            raise
        raise death from None


def worker_death(err: BaseException) -> MdeError | None:
    """The one-line error for torch's words when a data-loader worker process dies (the out-of-memory killer, a
    `kill -9`), or None for another error. torch raises them where the loader is iterated, or from its SIGCHLD
    handler wherever the main thread is (in `backward`, say): `batches` and the trainer both ask. A SIGTERM that
    stopped the whole run reaches the workers too, and is said as the stop by `mde.cli`."""
    if isinstance(err, RuntimeError) and re.match(
            r"DataLoader worker \(pid(\(s\))? [\d, ]+\) (is killed by signal|exited unexpectedly)", str(err)):
        return MdeError("a data-loader worker process was killed or crashed (out of memory?): try fewer --workers, "
                        "or --workers 0")
    return None
