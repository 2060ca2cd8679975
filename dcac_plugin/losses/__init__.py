"""Losses, registered by name in :data:`dcac_plugin.registry.LOSSES`.

``cross_entropy`` and ``triplet`` are torchreid's own; ``pcl`` is the prototype memory of
eq. 6-7, whose ``loss`` method is L_pcl.
"""
from torchreid import losses as reid_losses

from ..registry import LOSSES
from .pcl import PrototypeMemory, prototypical_contrastive_loss

LOSSES.register("cross_entropy", reid_losses.CrossEntropyLoss)
LOSSES.register("triplet", reid_losses.TripletLoss)
LOSSES.register("pcl", PrototypeMemory)

__all__ = ["PrototypeMemory", "prototypical_contrastive_loss"]
