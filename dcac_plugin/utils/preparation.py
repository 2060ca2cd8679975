"""Preparation under torchrun, on one machine or several: who writes what, and when.

Before training, a run may write into folders that are not its own output: the data root
(generated datasets), the weight caches (Hugging Face, torch hub, open_clip, the generated tiny
diffusion model) and the latent cache in ``data.save_dir``. Each folder may sit on a machine's
own disk or on a file system several machines share, and a job does not know which.

So before each preparation step the first process of every machine (``LOCAL_RANK`` 0, the node
leader) finds out which other leaders see the same folders: each leaves a probe file in every
folder the step may write (in its nearest existing parent, since the folder may not exist yet)
and then looks for the others' probes. The step then runs in rounds: a leader goes after every
earlier leader it shares one of the folders with, so no two processes ever write one file and a
later leader finds what an earlier one wrote; leaders that share nothing go at the same time,
each preparing its own disk; the other processes go last, when every disk holds what they read.
On one machine this is rank 0 first, then the others. Outside torchrun it is a no-op.
"""
from __future__ import annotations

import contextlib
import glob
import os
import os.path as osp
import uuid
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence

from . import distributed

PROBE_PREFIX = ".dcac-probe-"


def nearest_existing_folder(path: str) -> str:
    """``path`` itself if it is a folder, else its nearest existing parent folder."""
    path = osp.abspath(osp.expanduser(path))
    while not osp.isdir(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_path(folder: str, token: str, rank: int) -> str:
    return osp.join(nearest_existing_folder(folder), f"{PROBE_PREFIX}{token}-{rank}")


def _leave_probes(folders: Sequence[str], token: str, rank: int) -> List[str]:
    """Probe files in ``folders`` (those that can be written); returns the ones left."""
    left = []
    for folder in folders:
        path = _probe_path(folder, token, rank)
        try:
            with open(path, "x", encoding="utf-8"):
                left.append(path)
        except FileExistsError:  # two folders with the same nearest parent: one probe serves both
            pass
        except OSError:  # a read-only folder: this leader will not write there either
            pass
    return left


def _probes_seen(folders: Sequence[str], token: str) -> FrozenSet[int]:
    """Ranks of the leaders whose probes this process sees in any of ``folders``."""
    seen = set()
    for folder in folders:
        for path in glob.glob(osp.join(nearest_existing_folder(folder), f"{PROBE_PREFIX}{token}-*")):
            seen.add(int(path.rsplit("-", 1)[1]))
    return frozenset(seen)


def preparation_rounds(sharing: Dict[int, Optional[FrozenSet[int]]]) -> Dict[int, int]:
    """The round of every rank: ``sharing`` maps each rank to the leaders whose folders it shares
    (itself included), or None for a process that is no leader.

    A leader's round is one after the latest round of the earlier leaders (lower ranks) it shares
    a folder with, 0 if none; every other process goes in the round after the last leader's.
    """
    rounds: Dict[int, int] = {}
    for rank in sorted(r for r, shared in sharing.items() if shared is not None):
        earlier = [rounds[other] for other in sharing[rank] if other < rank and other in rounds]
        rounds[rank] = 1 + max(earlier) if earlier else 0
    last = 1 + max(rounds.values(), default=-1)
    return {rank: rounds.get(rank, last) for rank in sharing}


def _my_round(folders: Sequence[str]) -> tuple:
    """(this process's round, the number of rounds), agreed on by every rank (collective)."""
    info = distributed.current_info()
    token = distributed.broadcast_object(uuid.uuid4().hex)
    leader = info.local_rank == 0
    probes = _leave_probes(folders, token, info.rank) if leader else []
    distributed.barrier()
    seen = (_probes_seen(folders, token) | {info.rank}) if leader else None
    sharing = dict(enumerate(distributed.all_gather_objects(seen)))
    distributed.barrier()  # every leader has looked before any probe goes
    for path in probes:
        with contextlib.suppress(OSError):
            os.remove(path)
    rounds = preparation_rounds(sharing)
    return rounds[info.rank], 1 + max(rounds.values())


@contextlib.contextmanager
def prepared_in_rounds(folders: Sequence[str]) -> Iterator[None]:
    """Run the block in this process's round (see the module's docstring) of a step that may
    write into ``folders``; every process of the job must enter it."""
    if distributed.world_size() == 1:
        yield
        return
    mine, count = _my_round([f for f in folders if f])
    for _ in range(mine):
        distributed.barrier()
    yield
    for _ in range(mine, count):
        distributed.barrier()


__all__ = ["nearest_existing_folder", "prepared_in_rounds", "preparation_rounds"]
