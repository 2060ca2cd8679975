"""Engines, registered by name in :data:`dcac_plugin.registry.ENGINES`."""
from .baseline import BaselineEngine, reid_loss
from .dcac import DCACEngine, total_loss
from .toolbox import SoftmaxEngine, TripletEngine

__all__ = ["BaselineEngine", "DCACEngine", "SoftmaxEngine", "TripletEngine", "reid_loss", "total_loss"]
