"""Re-ID models: ours registered into torchreid's model factory, and the wrapper that gives any
torchreid model the paper's Re-ID head."""
from .clip_reid import CLIP_MODELS, ClipReID, clip_vit_b16, clip_vit_tiny
from .reid_head import BNNeckReID, ReIDOutput
from .toolbox_reid import ToolboxReID, build_toolbox_reid, check_toolbox_model

__all__ = ["BNNeckReID", "CLIP_MODELS", "ClipReID", "ReIDOutput", "ToolboxReID", "build_toolbox_reid",
           "check_toolbox_model", "clip_vit_b16", "clip_vit_tiny"]
