"""Cached VAE posteriors of the training images (speed; mathematically the same as encoding).

The diffusion view is never augmented and the VAE is frozen, so the posterior (mean, std)
of each training image is a constant. Computing it once and drawing a fresh latent from it
every step gives the same distribution of latents as encoding on the fly, at a fraction of
the cost: the reference encodes every step (paper Table 6: 4.1x the baseline's step time).
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from ..data.images import READING
from ..data.loaders import image_list_loader
from ..speed.performance import full_precision
from ..utils.checkpoint import CheckpointError, atomic_save, load_checkpoint
from .denoising import posterior_parameters

FileKey = Tuple[str, int, int]  # absolute path, size in bytes, modification time (ns)


def file_key(path: str) -> FileKey:
    """What identifies an image's content cheaply: path, size and mtime."""
    stat = os.stat(path)
    return os.path.abspath(path), int(stat.st_size), int(stat.st_mtime_ns)


def vae_fingerprint(vae: torch.nn.Module, image_size: int) -> str:
    """A digest of the VAE's weights and config, of the diffusion view size and of how images
    are read (:data:`~dcac_plugin.data.images.READING`).

    Any change to these makes every cached posterior stale.
    """
    digest = hashlib.sha256()
    digest.update(repr(sorted(dict(vae.config).items())).encode())
    digest.update(str(image_size).encode())
    digest.update(READING.encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Posterior mean and std (each 4 x s/8 x s/8) of every training image, by file key.

    Held in memory for lookups by path, and on disk at ``path`` (written atomically,
    loaded with ``weights_only=True``) so that a resumed or repeated run reuses it.
    """

    def __init__(self, path: str, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.index: Dict[FileKey, int] = {}
        self.mean: Optional[torch.Tensor] = None
        self.std: Optional[torch.Tensor] = None
        self._row_of_path: Dict[str, int] = {}

    def load(self) -> int:
        """Read the on-disk cache if it was made by the same VAE; returns the entries kept. A cache
        that cannot be read (truncated, corrupt, not ours) is rebuilt with a note."""
        if not os.path.isfile(self.path):
            return 0
        try:
            state = load_checkpoint(self.path)
            if state.get("fingerprint") != self.fingerprint:
                print(f"Latent cache {self.path} was made by another VAE, view size or image reading: rebuilding it")
                return 0
            index = {tuple(key): row for row, key in enumerate(state["keys"])}
            mean, std = state["mean"], state["std"]
        except (CheckpointError, KeyError, TypeError):
            # Derived data only (a kill mid-write cannot truncate it, a bad disk can): encoded again.
            print(f"Latent cache {self.path} cannot be read (truncated, corrupt, or not a latent cache); it only "
                  "holds VAE posteriors of the training images, so it is rebuilt")
            return 0
        self.index, self.mean, self.std = index, mean, std
        return len(self.index)

    def build(self, paths: Sequence[str], vae: torch.nn.Module, transform: Callable, batch_size: int = 64,
              workers: int = 0, device: Optional[torch.device] = None) -> int:
        """Make sure every image in ``paths`` has a current entry; returns how many were encoded.

        Entries whose file changed (size or mtime) are encoded again; the rest are kept.
        """
        self.load()
        keys = [file_key(p) for p in dict.fromkeys(paths)]
        missing = [k for k in keys if k not in self.index]
        if missing:
            mean, std = self._encode([k[0] for k in missing], vae, transform, batch_size, workers, device)
            kept = [k for k in keys if k in self.index]
            rows = [self.index[k] for k in kept]
            old_mean = self.mean[rows] if rows else mean[:0]
            old_std = self.std[rows] if rows else std[:0]
            self.mean, self.std = torch.cat([old_mean, mean]), torch.cat([old_std, std])
            self.index = {k: i for i, k in enumerate(kept + missing)}
            atomic_save({"fingerprint": self.fingerprint, "keys": [list(k) for k in self.index],
                         "mean": self.mean, "std": self.std}, self.path)
        self._row_of_path = {key[0]: row for key, row in self.index.items()}
        return len(missing)

    @torch.no_grad()
    def _encode(self, paths: List[str], vae, transform, batch_size, workers, device) -> Tuple[torch.Tensor, torch.Tensor]:
        device = device or next(vae.parameters()).device
        loader = image_list_loader([(p, 0, 0) for p in paths], transform, batch_size, workers)
        means, stds = [], []
        for batch in tqdm(loader, desc="Latent cache (VAE posteriors)", dynamic_ncols=True):
            # Once per image, so in fp32 whatever train.amp is (the reference encodes every step
            # under fp16 autocast); every step then samples from these.
            with full_precision(torch.device(device)):
                mean, std = posterior_parameters(vae, batch["img"].to(device))
            means.append(mean.float().cpu())
            stds.append(std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def lookup(self, paths: Sequence[str], device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, std) of a batch of training images, in batch order."""
        try:
            rows = torch.tensor([self._row_of_path[os.path.abspath(p)] for p in paths])
        except KeyError as err:
            raise KeyError(f"Image {err.args[0]} is not in the latent cache {self.path}; was it added after the "
                           "cache was built?") from None
        return self.mean[rows].to(device), self.std[rows].to(device)
