"""Engines, registered by name in :data:`dcac_plugin.registry.ENGINES`."""
from .baseline import BaselineEngine, reid_loss
from .toolbox import SoftmaxEngine, TripletEngine

__all__ = ["BaselineEngine", "SoftmaxEngine", "TripletEngine", "reid_loss"]
