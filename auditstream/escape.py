"""Turn untrusted audit bytes into JSON-safe text that maps back to the exact bytes.

Audit text is not guaranteed UTF-8 and comm/exe/proctitle/paths are attacker
controlled. We follow laurel's convention: printable ASCII and valid multi-byte
UTF-8 pass through; ``%`` becomes ``%25``; control bytes, DEL and bytes that are
not part of valid UTF-8 become ``%xx`` (lower-case hex). The mapping is exact
and reversible with :func:`unescape` (``urllib.parse.unquote_to_bytes``), and
no output string contains a newline, so no input can forge a second JSON line.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

# Bytes that can never pass through unchanged: controls, '%', DEL and non-ASCII.
_NEEDS_WORK = re.compile(rb"[^\x20-\x24\x26-\x7e]")
# Inside decoded text: controls, '%', DEL, and U+FEFF (BOM), which laurel escapes too.
_TEXT_ESCAPES = re.compile("[\x00-\x1f%\x7f\ufeff]")


def _pct_bytes(raw: bytes) -> str:
    return "".join(f"%{b:02x}" for b in raw)


def _pct_text(match: re.Match[str]) -> str:
    return _pct_bytes(match.group(0).encode("utf-8"))


def escape(raw: bytes) -> str:
    """Return ``raw`` as a str safe for JSON and for line-oriented logs."""
    if _NEEDS_WORK.search(raw) is None:
        return raw.decode("ascii")
    out: list[str] = []
    view = raw
    while view:
        try:
            text = view.decode("utf-8")
        except UnicodeDecodeError as err:
            out.append(_TEXT_ESCAPES.sub(_pct_text, view[: err.start].decode("utf-8")))
            out.append(_pct_bytes(view[err.start : err.end]))
            view = view[err.end :]
            continue
        out.append(_TEXT_ESCAPES.sub(_pct_text, text))
        break
    return "".join(out)


def unescape(text: str) -> bytes:
    """Invert :func:`escape`."""
    return unquote_to_bytes(text)
