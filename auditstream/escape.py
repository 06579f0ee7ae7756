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
# Inside decoded text: controls, '%', DEL, U+FEFF (BOM), which laurel escapes too, and
# the lone surrogates U+DC80..U+DCFF that the ``surrogateescape`` decode puts in place of
# each byte that is not valid UTF-8 (valid UTF-8 never decodes to a surrogate).
_TEXT_ESCAPES = re.compile("[\x00-\x1f%\x7f\ufeff\udc80-\udcff]")


def _pct(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # an invalid byte, as surrogateescape keeps it
        return f"%{ord(char) - 0xDC00:02x}"
    return "".join(f"%{b:02x}" for b in char.encode("utf-8"))


# Every character _TEXT_ESCAPES finds, to its %xx text: str.translate does them all in C.
_TRANSLATION = {
    code: _pct(chr(code)) for code in (*range(0x20), ord("%"), 0x7F, 0xFEFF, *range(0xDC80, 0xDD00))
}


def escape(raw: bytes) -> str:
    """Return ``raw`` as a str safe for JSON and for line-oriented logs."""
    if _NEEDS_WORK.search(raw) is None:
        return raw.decode("ascii")
    # One decode: the decoder resumes after each invalid sequence exactly where a strict
    # decode would report it, so the bytes escaped are the same; a loop of strict decodes
    # cost ~7 us per invalid sequence (an exception each), which hostile input multiplies.
    text = raw.decode("utf-8", "surrogateescape")
    if _TEXT_ESCAPES.search(text) is None:
        return text
    return text.translate(_TRANSLATION)


def unescape(text: str) -> bytes:
    """Invert :func:`escape`."""
    return unquote_to_bytes(text)
