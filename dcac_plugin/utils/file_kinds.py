"""What a file given as weights really is, told from its first bytes before it is unpickled.

``torch.load`` on a file that is no checkpoint fails with whatever its unpickler hits first:
"pop from empty list", "Unsupported operand 110", "invalid load key", or the advice to load
with ``weights_only=False``, which would be wrong (and unsafe) here. A config, a log, a JSON
file or an empty file named by mistake is recognised first and named as what it is.
"""
from __future__ import annotations

import json
import zipfile
from typing import Optional

# How many leading bytes are looked at, and shown.
HEAD_BYTES = 4096
SHOWN_CHARACTERS = 40
# torch.save writes a zip archive (since torch 1.6; its first local header's signature) or, in the
# legacy format, a pickle, whose first byte is the PROTO opcode.
PICKLE_PROTO = b"\x80"
ZIP_MAGIC = b"PK\x03\x04"


def _text_kind(text: str) -> str:
    """A short description of text content: JSON, YAML-like settings, or text, with its start."""
    start = " ".join(text.split())[:SHOWN_CHARACTERS]
    try:
        json.loads(text)
        kind = "a JSON file"
    except ValueError:
        kind = "a YAML or text file" if ":" in start else "a text file"
    return f"{kind} beginning {start!r}" if start else "a text file holding only blank space"


def not_a_torch_file(path: str) -> Optional[str]:
    """Why ``path`` cannot be a file written by ``torch.save`` (``"empty (0 bytes)"``, ``"a JSON file
    beginning '{...'"``), or None when it may be one. A file that cannot be read is left to the
    loader, which names the OS error."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    if not head:
        return "empty (0 bytes)"
    if head.startswith((PICKLE_PROTO, ZIP_MAGIC)) or zipfile.is_zipfile(path):
        return None  # maybe a checkpoint, maybe a truncated one: the loader says which
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of what was read
            return f"binary data, neither a zip archive nor a pickle (it begins {head[:8].hex(' ')})"
        text = head[:err.start].decode("utf-8")
    return _text_kind(text)


__all__ = ["not_a_torch_file"]
