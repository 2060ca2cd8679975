"""Whether the Hugging Face Hub (or another download host) can be reached, decided once and quickly.

Without a network, huggingface_hub retries each request with back-off and open_clip then
tries every file name it knows, so a missing weight file costs about a minute of repeated
warnings before any error. The loaders of CLIP and Stable Diffusion weights ask here first:
``HF_HUB_OFFLINE`` is honoured at once, and otherwise one short request to the hub endpoint
decides (remembered for the process), so that an unreachable hub ends in one clear error.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

from huggingface_hub import constants, hf_hub_url, try_to_load_from_cache
from huggingface_hub.utils import get_session

from .writable import ensure_writable_folder, environment_fix

PROBE_TIMEOUT_SECONDS = 5.0
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def offline_by_environment() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value (read now, not at import, so a launcher can set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str, timeout: float) -> Optional[str]:
    """None when ``endpoint`` answers at all (any HTTP status), else why it cannot be reached."""
    try:
        get_session().head(endpoint, timeout=timeout)  # redirects are not followed: one request
    except Exception as error:  # connection refused, DNS failure, timeout, proxy error ...
        return f"{endpoint} cannot be reached ({type(error).__name__})"
    return None


def hub_unreachable_reason(timeout: float = PROBE_TIMEOUT_SECONDS) -> Optional[str]:
    """Why nothing can be downloaded from the hub now, or None when it can.

    Honours ``HF_HUB_OFFLINE``; otherwise makes ONE request of at most ``timeout`` seconds to
    the hub endpoint (``HF_ENDPOINT``), without retries, and remembers the answer.
    """
    if offline_by_environment():
        return "HF_HUB_OFFLINE is set"
    return _probe(constants.ENDPOINT, timeout)


@functools.lru_cache(maxsize=None)
def _probe_host(origin: str, timeout: float) -> Optional[str]:
    """None when ``origin`` (scheme://host) answers at all, else why it cannot be reached."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(origin, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:  # it answered, if only with an error status
        return None
    except Exception as error:  # DNS failure, refused, timeout, proxy error ...
        return f"{origin} cannot be reached ({type(error).__name__})"
    return None


def url_unreachable_reason(url: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> Optional[str]:
    """Why the host of ``url`` (outside the Hugging Face Hub: Google Drive, download.pytorch.org)
    cannot be reached now, or None when it can: ONE request of at most ``timeout`` seconds per
    host, remembered for the process."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return _probe_host(f"{parts.scheme}://{parts.netloc}", timeout)


def cached_file(repo_id: str, filename: str) -> Optional[str]:
    """The local path of ``filename`` of ``repo_id`` in the Hugging Face cache, or None."""
    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) and os.path.isfile(path) else None


def file_url(repo_id: str, filename: str) -> str:
    """The download address of one file of a hub repository (for error messages)."""
    return hf_hub_url(repo_id, filename)


def ensure_hub_cache_writable(what: str, alternative: str) -> None:
    """Before a download into the Hugging Face cache: an unwritable cache (a read-only HOME) is one
    line naming it, the variable that moves it and ``alternative``, not a traceback mid-download."""
    variable = "HF_HUB_CACHE" if os.environ.get("HF_HUB_CACHE") else "HF_HOME"
    ensure_writable_folder(constants.HF_HUB_CACHE, what,
                           f"{environment_fix(variable, '~/.cache/huggingface/hub')} {alternative}")


def repo_url(repo_id: str) -> str:
    """The web page of a hub repository (for error messages)."""
    return f"{constants.ENDPOINT}/{repo_id}"


__all__ = ["PROBE_TIMEOUT_SECONDS", "cached_file", "ensure_hub_cache_writable", "file_url", "hub_unreachable_reason",
           "offline_by_environment", "repo_url", "url_unreachable_reason"]
