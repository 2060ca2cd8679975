"""Suggestions for a misspelt name: the valid names closest to it."""
from __future__ import annotations

import difflib
from typing import List, Optional


def nearest_names(name: str, candidates, count: int = 3) -> List[str]:
    """Up to ``count`` valid names close to a misspelt one, closest first."""
    return difflib.get_close_matches(name, list(candidates), n=count, cutoff=0.5)


def nearest_name(name: str, candidates) -> Optional[str]:
    """The closest valid name to a misspelt one, or None when nothing is close."""
    matches = nearest_names(name, candidates, count=1)
    return matches[0] if matches else None


__all__ = ["nearest_name", "nearest_names"]
