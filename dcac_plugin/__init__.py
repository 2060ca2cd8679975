"""dcac-reid: DCAC (diffusion model-assisted CLIP Re-ID) as a torchreid extension.

``import dcac_plugin`` registers, into torchreid's own tables, the models
``clip_vit_b16`` and ``clip_vit_tiny``, the synthetic demo datasets and the authors' layouts of
MSMT17 and CUHK03-NP (``msmt17_folder``, ``cuhk03_np``), and fills our
engine and loss registries (torchreid has none). Importing again changes nothing.
"""
from .toolbox_check import import_toolbox

# Every import of this package runs this first, so torchreid is first imported (and checked) here.
import_toolbox()

from . import engines, losses  # noqa: F401,E402  (fill the ENGINES / LOSSES registries)
from .moved import install_old_paths  # noqa: E402
from .registration import register_all  # noqa: E402
from .registry import ENGINES, LOSSES  # noqa: E402

__version__ = "0.2.0"

register_all()
install_old_paths()  # 0.1's module paths, for one release (see dcac_plugin.moved)

__all__ = ["ENGINES", "LOSSES", "__version__", "register_all"]
