"""torchreid's ImageNet weights: used from its cache, downloaded only when the host answers.

torchreid fetches a model's pretrained weights while it builds the model: OSNet and OSNet-AIN
from Google Drive through gdown into ``$TORCH_HOME/checkpoints/<name>_imagenet.pth``, the others
(ResNet, DenseNet, ...) through torch's ``model_zoo.load_url`` into
``$TORCH_HOME/hub/checkpoints/<file>``. Offline, that ends in a traceback from inside gdown or
urllib after retries. While a model is built, :func:`checked_toolbox_downloads` stands in for
both: a cached file is read as torchreid would, and a missing one is downloaded only when its
host answers one short request; otherwise (or when the download fails) one error names the file,
its URL, torchreid's cache path and ``model.pretrained False``, as for CLIP and Stable Diffusion.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from dcac_config.errors import UsageError

from ..utils.hub import url_unreachable_reason
from ..utils.writable import WRITE_ERRNOS


def weights_error(model: str, url: str, target: str, problem: str) -> UsageError:
    """The one line: which file is missing and why, where to put it, how to do without."""
    return UsageError(f"torchreid's ImageNet weights for model {model} are not in its cache ({target}) and {problem}. "
                      f"Download {url} to {target} (TORCH_HOME moves torchreid's cache), or set model.pretrained "
                      "False to start from a random initialisation.")


def _fetched(model: str, url: str, target: str, download: Callable[[], Any]) -> Any:
    """``download()`` of ``url`` into ``target``: read from the cache when it is there, else fetched
    when its host answers. A cache that cannot be written stays an OSError, for
    :func:`~dcac_plugin.utils.writable.writing_torch_cache` to name."""
    if os.path.isfile(target):
        return download()
    reason = url_unreachable_reason(url)
    if reason:
        raise weights_error(model, url, target, reason)
    try:
        result = download()
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise
        raise weights_error(model, url, target, f"downloading it failed ({type(error).__name__})") from None
    except Exception as error:  # a refused or interrupted download, Google Drive's quota page ...
        raise weights_error(model, url, target, f"downloading it failed ({type(error).__name__})") from None
    if not os.path.isfile(target):  # gdown reports some failures by returning None
        raise weights_error(model, url, target, "downloading it failed")
    return result


@contextlib.contextmanager
def checked_toolbox_downloads(model: str) -> Iterator[None]:
    """While building torchreid model ``model``, its weight downloads go through :func:`_fetched`."""
    import torch.hub
    import torch.utils.model_zoo as model_zoo

    try:
        import gdown
    except ImportError:  # only OSNet's weights come through it, and torchreid then fails on the import itself
        gdown = None
    load_url = model_zoo.load_url

    def checked_load_url(url: str, model_dir: Any = None, *args: Any, **kwargs: Any) -> Any:
        folder = model_dir or os.path.join(torch.hub.get_dir(), "checkpoints")
        target = os.path.join(folder, kwargs.get("file_name") or os.path.basename(urlsplit(url).path))
        return _fetched(model, url, target, lambda: load_url(url, model_dir, *args, **kwargs))

    model_zoo.load_url = checked_load_url
    if gdown is not None:
        download = gdown.download

        def checked_gdown(url: str, output: str, *args: Any, **kwargs: Any) -> Any:
            return _fetched(model, url, output, lambda: download(url, output, *args, **kwargs))

        gdown.download = checked_gdown
    try:
        yield
    finally:
        model_zoo.load_url = load_url
        if gdown is not None:
            gdown.download = download


__all__ = ["checked_toolbox_downloads", "weights_error"]
