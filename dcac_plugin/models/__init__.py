"""Re-ID models registered into torchreid's model factory."""
from .clip_reid import CLIP_MODELS, ClipReID, ReIDOutput, clip_vit_b16, clip_vit_tiny

__all__ = ["CLIP_MODELS", "ClipReID", "ReIDOutput", "clip_vit_b16", "clip_vit_tiny"]
