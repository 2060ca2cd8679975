"""Identity (PK) sampling across ranks: P identities x K images per batch on every rank.

torchreid's ``RandomIdentitySampler`` draws from the global ``random``/numpy streams of
one process. Under torchrun every rank needs its own batches, with no identity on two
ranks in the same epoch (a batch's PK structure, and so the PCL and ID terms, stay those
of a single-GPU run). Each epoch the identities are shuffled and dealt out to the ranks
with a generator seeded by (seed, epoch), the same on every rank, so the ranks agree on
the split without talking and a resumed run draws the same batches again.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Dict, Iterator, List, Sequence

from torch.utils.data import DistributedSampler, Sampler
from torchreid import data as reid_data


def pk_batches(index_of_pid: Dict[int, List[int]], pids: Sequence[int], num_instances: int,
               pids_per_batch: int, rng: random.Random) -> List[List[int]]:
    """torchreid's identity sampling over ``pids``: each identity's images shuffled and cut
    into groups of K (drawn with replacement when it has fewer than K); batches of P
    identities picked at random among those with groups left."""
    groups: Dict[int, List[List[int]]] = {}
    for pid in pids:
        indices = list(index_of_pid[pid])
        if len(indices) < num_instances:
            indices = [rng.choice(indices) for _ in range(num_instances)]
        rng.shuffle(indices)
        groups[pid] = [indices[i:i + num_instances] for i in range(0, len(indices) - num_instances + 1, num_instances)]
    available = [pid for pid in pids if groups[pid]]
    batches = []
    while len(available) >= pids_per_batch:
        batch = []
        for pid in rng.sample(available, pids_per_batch):
            batch.extend(groups[pid].pop(0))
            if not groups[pid]:
                available.remove(pid)
        batches.append(batch)
    return batches


class DistributedIdentitySampler(Sampler):
    """PK batches of ``batch_size`` = P x ``num_instances`` per rank, identities disjoint across ranks.

    Every rank gets the same number of batches (the smallest share), as DDP steps in lockstep.
    Call :meth:`set_epoch` before each epoch; ``state_dict`` is what a resume needs.
    """

    def __init__(self, data_source: Sequence[tuple], batch_size: int, num_instances: int, rank: int,
                 world_size: int, seed: int = 0) -> None:
        if batch_size % num_instances:
            raise ValueError(f"train.batch_size {batch_size} must be a multiple of sampler.num_instances "
                             f"{num_instances} (P identities x K images per batch).")
        self.batch_size, self.num_instances = batch_size, num_instances
        self.pids_per_batch = batch_size // num_instances
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.index_of_pid: Dict[int, List[int]] = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_of_pid[int(item[1])].append(index)
        self.pids = sorted(self.index_of_pid)
        needed = self.pids_per_batch * world_size
        if len(self.pids) < needed:
            raise ValueError(f"{len(self.pids)} training identities cannot fill {world_size} ranks x "
                             f"{self.pids_per_batch} identities per batch; lower train.batch_size or "
                             f"raise sampler.num_instances, or use fewer processes.")
        self._batches = self._epoch_batches()

    def _epoch_batches(self) -> List[List[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(self.pids)
        rng.shuffle(order)
        shares = [pk_batches(self.index_of_pid, order[r::self.world_size], self.num_instances,
                             self.pids_per_batch, rng) for r in range(self.world_size)]
        steps = min(len(share) for share in shares)
        return shares[self.rank][:steps]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._batches = self._epoch_batches()

    def rank_identities(self) -> List[int]:
        """The identities this rank sees this epoch (sorted), for tests and logs."""
        index_to_pid = {i: pid for pid, indices in self.index_of_pid.items() for i in indices}
        return sorted({index_to_pid[i] for batch in self._batches for i in batch})

    def __iter__(self) -> Iterator[int]:
        return iter([index for batch in self._batches for index in batch])

    def __len__(self) -> int:
        return len(self._batches) * self.batch_size

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"])


def build_train_sampler(items: Sequence[tuple], name: str, batch_size: int, num_instances: int = 4,
                        num_cams: int = 1, num_datasets: int = 1, seed: int = 0, rank: int = 0,
                        world_size: int = 1) -> Sampler:
    """torchreid's sampler ``name`` in one process; under torchrun its distributed counterpart
    (identity sampling: :class:`DistributedIdentitySampler`; random: torch's DistributedSampler)."""
    if world_size == 1:
        if name == "RandomIdentitySampler":
            check_identity_count(items, batch_size, num_instances)
        return reid_data.sampler.build_train_sampler(items, name, batch_size=batch_size, num_instances=num_instances,
                                                     num_cams=num_cams, num_datasets=num_datasets)
    if name == "RandomIdentitySampler":
        return DistributedIdentitySampler(items, batch_size, num_instances, rank, world_size, seed=seed)
    if name in ("RandomSampler", "SequentialSampler"):
        return DistributedSampler(items, num_replicas=world_size, rank=rank, shuffle=name == "RandomSampler",
                                  seed=seed, drop_last=True)
    raise ValueError(f"sampler.train_sampler {name!r} has no distributed version; under torchrun use "
                     "RandomIdentitySampler, RandomSampler or SequentialSampler.")


def check_identity_count(items: Sequence[tuple], batch_size: int, num_instances: int) -> None:
    """torchreid's identity sampler only asserts this; say what to change instead."""
    pids = {int(item[1]) for item in items}
    if batch_size < num_instances or len(pids) < batch_size // num_instances:
        raise ValueError(f"RandomIdentitySampler needs train.batch_size ({batch_size}) >= sampler.num_instances "
                         f"({num_instances}) and at least batch_size / num_instances = "
                         f"{max(1, batch_size // max(1, num_instances))} identities; the training set has "
                         f"{len(pids)}. Lower train.batch_size or raise sampler.num_instances.")
