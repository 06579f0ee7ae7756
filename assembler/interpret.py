"""Interpret a parsed record into go-libaudit's auparse ``data`` map and rule ``keys``.

The rules are go-libaudit's (``auparse.go``, ``hex.go``, ``sockaddr.go``), as
summarised in the conformance corpus README §1a: drop ``?``/``(null)``/empty
values, merge ``msg='…'`` into the top level (later duplicates win), the
AVC/LOGIN/PAM fix-ups, ``unset`` ids, subj/obj context split, ``result``,
errno names for ``exit``, rule keys (hex multi-keys split on 0x01), arch and
per-arch syscall names, SECCOMP signal names, upper-case hex decoding of the
listed fields only, and SOCKADDR decoding (:mod:`assembler.sockaddr`).

Bytes become str by one rule: every value is :func:`auditstream.escape.escape` of
its bytes (raw tokens and hex-decoded values alike), so ``unescape`` gives back the
exact bytes. go-libaudit writes decoded bytes into Go strings instead (control
characters and ``%`` kept, invalid UTF-8 as U+FFFD); the tests compare against its
goldens passed through the same escape.

Speed: this runs for every record. The body is decoded once (ASCII, else
surrogateescape, which is lossless); a plain body (see :mod:`assembler.fields`) is split with
str methods, anything else with one ``findall``; hex is decoded only for the fields
listed per record type; non-SYSCALL results are memoised (bounded), since CWD,
PROCTITLE and many PATH records repeat byte for byte.

Deliberate difference: go-libaudit fails the whole record (``Data()`` error, no
data at all) when a step's field is missing or malformed — e.g. a SYSCALL
without ``exe`` (kernel threads log ``exe=(null)``), an EXECVE missing an
argument, an odd ``saddr``. Here that step is skipped and the other fields
stay: :func:`interpret` never raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from assembler.fields import DROPPED_VALUES as _DROPPED_VALUES
from assembler.fields import FIELDS as _FIELDS
from assembler.fields import PLAIN_BODY as _PLAIN_BODY
from assembler.fields import PlainTokens as _PlainTokens
from assembler.fields import parse_fields as _parse_fields
from assembler.parse import Record
from assembler.sockaddr import decode_sockaddr
from assembler.tables import ARCH_NAMES, ERRNO_NAMES, SIGNAL_NAMES, SYSCALL_NAMES
from auditstream.escape import escape
from auditstream.record_types import NUMBER_BY_NAME

_SYSCALL = NUMBER_BY_NAME["SYSCALL"]
_SECCOMP = NUMBER_BY_NAME["SECCOMP"]
_SOCKADDR = NUMBER_BY_NAME["SOCKADDR"]
_PROCTITLE = NUMBER_BY_NAME["PROCTITLE"]
_USER_CMD = NUMBER_BY_NAME["USER_CMD"]
_TTY_TYPES = (NUMBER_BY_NAME["TTY"], NUMBER_BY_NAME["USER_TTY"])
_EXECVE = NUMBER_BY_NAME["EXECVE"]
_PATH = NUMBER_BY_NAME["PATH"]
_USER_LOGIN = NUMBER_BY_NAME["USER_LOGIN"]
_AVC = NUMBER_BY_NAME["AVC"]
_LOGIN = NUMBER_BY_NAME["LOGIN"]
_PAM_OLD_FORMAT = (
    NUMBER_BY_NAME["CRED_DISP"],
    NUMBER_BY_NAME["USER_START"],
    NUMBER_BY_NAME["USER_END"],
)

# The body is matched as text: bytes decoded with surrogateescape, which is lossless,
# so one decode per record replaces one per field (the hot path: ASCII bodies).
_UNSET_IDS = ("4294967295", "-1")
_CONTEXT_PARTS = ("_user", "_role", "_domain", "_level", "_category")
_UPPER_HEX = re.compile(r"(?:[0-9A-F]{2})*")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_HEX_INT = re.compile(r"[+-]?[0-9a-fA-F]+")
# auparse's SELinux AVC regex with Go's ASCII-only \s and \w spelled out.
_GO_SPACE = "[\t\n\f\r ]"
_SELINUX_AVC = re.compile(
    rf"avc:{_GO_SPACE}+([0-9A-Za-z_]+){_GO_SPACE}+\{{{_GO_SPACE}*(.*){_GO_SPACE}*\}}"
    rf"{_GO_SPACE}+for{_GO_SPACE}+"
)
_GO_FIELDS_SPACE = re.compile("[\t\n\v\f\r \x85\xa0]+")  # strings.Fields separators
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class Interpreted:
    """go-libaudit's per-record result: the ``data`` map and the rule keys."""

    data: dict[str, str]
    keys: list[str]
    # The body was plain (see assembler.fields) and split as such: its tokens are exactly
    # space-separated key=value pairs (what assembler.syscall_tail relies on).
    plain: bool = False


def decode_hex(token: bytes) -> bytes | None:
    """Decode upper-case hex of even length (go-libaudit ignores lower case); else None."""
    try:
        return _decode_hex_text(token.decode("ascii"))
    except UnicodeDecodeError:
        return None


def _decode_hex_text(token: str) -> bytes | None:
    if _UPPER_HEX.fullmatch(token) is None:
        return None
    return bytes.fromhex(token)


def arch_name(hex_token: str) -> str:
    """``c000003e`` -> ``x86_64``; unknown -> ``unknown[<hex>]``; not hex -> unchanged."""
    if _GO_HEX_INT.fullmatch(hex_token) is None:
        return hex_token
    value = int(hex_token, 16)
    if not _INT64_MIN <= value <= _INT64_MAX:
        return hex_token  # Go's ParseInt(…, 16, 64) rejects it
    value &= 0xFFFFFFFF  # Go converts to uint32 AuditArch
    return ARCH_NAMES.get(value) or f"unknown[{value:x}]"


def syscall_name(arch: str, number: int) -> str:
    """Syscall name for an arch NAME (``x86_64``), or the number as text if unknown."""
    return SYSCALL_NAMES.get(arch, {}).get(number) or str(number)


def errno_name(n: int) -> str | None:
    """Name of positive errno ``n`` (13 -> ``EACCES``), None if unknown."""
    return ERRNO_NAMES.get(n)


def _text(raw: str) -> str:
    """A raw value (ASCII, or surrogateescape-decoded) as escaped text."""
    return escape(raw.encode("utf-8", "surrogateescape"))


def _go_atoi(value: str) -> int | None:
    if _GO_INT.fullmatch(value) is None:
        return None
    # Past 19 significant digits it cannot fit in int64; int() of a hostile 5,000-digit
    # value would raise (Python's digit limit) and lose the whole record.
    digits = value.lstrip("+-").lstrip("0")
    if len(digits) > 19:
        return None
    number = int(digits or "0")
    if value[0] == "-":
        number = -number
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _normalize(record_type: int, body: str) -> str:
    """go-libaudit's per-type rewrites that make odd bodies parse as key=value."""
    if record_type == _AVC:
        match = _SELINUX_AVC.search(body)
        if match is not None:  # AppArmor AVCs are already key=value
            perms = ",".join(p for p in _GO_FIELDS_SPACE.split(match.group(2)) if p)
            body = f"seresult={match.group(1)} seperms={perms} {body[match.end() :]}"
    elif record_type == _LOGIN:
        body = body.replace("old ", "old_", 2).replace("new ", "new_", 2)
    elif record_type in _PAM_OLD_FORMAT:
        body = body.replace(" (hostname=", " hostname=", 2).rstrip(")'")
    return body


def _hex_decode(
    values: dict[str, str], origs: Mapping[str, str], key: str, nul_ends: bool = False
) -> None:
    """Decode the field if its original token is upper-case hex (escaped, like every value).

    NULs separate strings (proctitle's argv) and become spaces, except where
    ``nul_ends`` (EXECVE arguments end at their first NUL).
    """
    orig = origs.get(key)
    if orig is None or orig[:1] == '"' or key not in values:
        return  # a quoted value is never hex
    decoded = _decode_hex_text(orig)
    if decoded is None:
        return
    raw = decoded.split(b"\x00", 1)[0] if nul_ends else decoded.replace(b"\x00", b" ")
    values[key] = escape(raw)


def _exact_text(orig: str) -> str:
    """The token's exact bytes, escaped: quotes removed (nothing else), hex decoded.

    For text the acting user chooses (comm, exe, cwd, path names, proctitle), where
    go-libaudit's strip of quote and space characters would lose bytes.
    """
    if orig[:1] in ("'", '"'):
        return _text(orig[1:-1])
    decoded = _decode_hex_text(orig) if orig else None
    if decoded is not None:
        return escape(decoded.replace(b"\x00", b" "))
    return _text(orig)


def _split_context(values: dict[str, str], key: str) -> None:
    """``subj=user:role:domain:level:category`` -> ``subj_user`` … (at most 5 parts)."""
    value = values.pop(key, None)
    if value is not None:
        for suffix, part in zip(_CONTEXT_PARTS, value.split(":", 4), strict=False):
            values[key + suffix] = part


def _result(values: dict[str, str]) -> None:
    """``success`` (else ``res``) -> ``result`` = success|fail."""
    value = values.pop("success", None)
    if value is None:
        value = values.pop("res", None)
        if value is None:
            return
    lower = value.lower()
    ok = lower in ("yes", "1") or lower.startswith("suc")
    values["result"] = "success" if ok else "fail"


def _exit_name(values: dict[str, str], exit_value: str) -> None:
    if exit_value[:1] != "-":
        return  # the common case: success, nothing to name
    code = _go_atoi(exit_value)
    if code is not None and code < 0:
        name = ERRNO_NAMES.get(-code)
        if name is not None:
            values["exit"] = name


def _rule_keys(values: dict[str, str], origs: Mapping[str, str]) -> list[str]:
    value = values.pop("key", None)
    if value is None:
        return []
    # Hex only if the token was (unquoted, so the value is the token): the token is
    # looked up only for values that look like hex.
    decoded = _decode_hex_text(value)
    if decoded is not None and origs["key"] == value:
        return [escape(part) for part in decoded.split(b"\x01")]  # 6578656301…: several keys
    return [value.split("=", 1)[-1]]  # key="key=net" -> ["net"]


def _execve_args(values: dict[str, str], origs: Mapping[str, str]) -> None:
    argc = values.get("argc")
    if argc is None or not argc.isascii() or not argc.isdigit():
        return
    for index in range(int(argc)):
        key = f"a{index}"
        if key not in values:
            break  # go-libaudit fails the record here; we keep what we have
        _hex_decode(values, origs, key, nul_ends=True)


@lru_cache(maxsize=1024)
def _syscall_name_of(arch: str, syscall: str) -> str | None:
    number = _go_atoi(syscall)
    return SYSCALL_NAMES.get(arch, {}).get(number) if number is not None else None


def _syscall_fields(values: dict[str, str], origs: Mapping[str, str], decode_exe: bool) -> None:
    arch = values.get("arch")
    if arch is not None:
        arch = values["arch"] = _cached_arch_name(arch)
        syscall = values.get("syscall")
        if syscall is not None:
            name = _syscall_name_of(arch, syscall)
            if name is not None:
                values["syscall"] = name
    if decode_exe:
        _hex_decode(values, origs, "exe")


def _signal_name(values: dict[str, str]) -> None:
    value = values.get("sig")
    number = _go_atoi(value) if value is not None else None
    name = SIGNAL_NAMES.get(number) if number is not None else None
    if name is not None:
        values["sig"] = name


def _sockaddr(values: dict[str, str]) -> None:
    value = values.get("saddr")
    if value is None or not value.isascii():
        return
    decoded = decode_sockaddr(value.encode("ascii"))
    if decoded is None:
        return  # go-libaudit fails the record; we keep the raw saddr
    del values["saddr"]
    values.update(decoded)


# Hex-encoded fields per record type (decoded only there, as go-libaudit).
_HEX_FIELDS: dict[int, str] = {
    _PROCTITLE: "proctitle",
    _USER_CMD: "cmd",
    _TTY_TYPES[0]: "data",
    _TTY_TYPES[1]: "data",
    _USER_LOGIN: "acct",
}
_NORMALIZED_TYPES = frozenset((_AVC, _LOGIN, *_PAM_OLD_FORMAT))
# Bytes escape() leaves as they are: printable ASCII except '%'.
_PASSES_ESCAPE = bytes(byte for byte in range(0x20, 0x7F) if byte != 0x25)
_cached_arch_name = lru_cache(maxsize=256)(arch_name)


# Memo of recent results: CWD, PROCTITLE and many PATH/user records repeat byte for byte
# (the same command, directory, library). Bounded; cleared whole when full, so hostile
# input that never repeats costs one dict insert per record.
_MEMO: dict[tuple[int, bytes, tuple[str, ...]], Interpreted] = {}
_MEMO_MAX_ENTRIES = 2048
_MEMO_MAX_BODY = 1024


def interpret(rec: Record, exact: tuple[str, ...] = ()) -> Interpreted:
    """Return go-libaudit's auparse ``data`` and ``keys`` for one record.

    ``exact`` names fields whose value is instead the token's exact text (see
    :func:`_exact_text`); the coalescer asks for it for user-chosen text. The caller
    owns the result (a fresh dict and list each call).
    """
    body = rec.body
    if rec.type == _SYSCALL or len(body) > _MEMO_MAX_BODY:
        return _interpret(rec.type, body, exact)  # SYSCALL bodies (pid, exit…) rarely repeat
    known = interpret_shared(rec, exact)
    return Interpreted(dict(known.data), list(known.keys))


def interpret_shared(rec: Record, exact: tuple[str, ...] = ()) -> Interpreted:
    """:func:`interpret`, but the result may be the memo's own: read it, never change it.

    For the coalescer, which only reads the records it folds in (no copy per record).
    """
    body = rec.body
    if rec.type == _SYSCALL or len(body) > _MEMO_MAX_BODY:
        return _interpret(rec.type, body, exact)
    memo_key = (rec.type, body, exact)
    known = _MEMO.get(memo_key)
    if known is None:
        if len(_MEMO) >= _MEMO_MAX_ENTRIES:
            _MEMO.clear()
        known = _MEMO[memo_key] = _interpret(rec.type, body, exact)
    return known


def _interpret(record_type: int, body: bytes, exact: tuple[str, ...]) -> Interpreted:
    ascii_body = body.isascii()
    text = body.decode("ascii") if ascii_body else body.decode("utf-8", "surrogateescape")
    # Does anything need escape() (controls, '%', DEL, non-ASCII)? C-level tests: deleting
    # every byte that passes leaves nothing.
    if record_type in _NORMALIZED_TYPES:
        text = _normalize(record_type, text)
        clean = ascii_body and "%" not in text and text.isprintable()
    else:
        clean = not body.translate(None, _PASSES_ESCAPE)
    values, origs = _parse_fields(text)
    if not clean:
        # Control bytes, '%' or non-ASCII somewhere: escape the raw values first, so
        # the steps below see (and keep) escaped text; hex decoding escapes its own.
        values = {key: _text(value) for key, value in values.items()}
    if "4294967295" in text or "-1" in text:  # substring guard: usually neither is there
        for key in ("auid", "old-auid", "ses"):
            if values.get(key) in _UNSET_IDS:
                values[key] = "unset"
    if "subj" in values:
        _split_context(values, "subj")
    _result(values)
    exit_value = values.get("exit")
    if exit_value is not None:
        _exit_name(values, exit_value)
    keys = _rule_keys(values, origs) if "key" in values else []
    # Hex decoding of a field in ``exact`` is skipped: the exact pass below replaces it.
    if "cwd" in values and "cwd" not in exact:
        _hex_decode(values, origs, "cwd")

    if record_type in (_SYSCALL, _SECCOMP):
        if record_type == _SECCOMP:
            _signal_name(values)
        _syscall_fields(values, origs, "exe" not in exact)
    elif record_type == _SOCKADDR:
        _sockaddr(values)
    elif record_type == _EXECVE:
        _execve_args(values, origs)
    elif record_type == _PATH:
        _split_context(values, "obj")
        if "name" not in exact:
            _hex_decode(values, origs, "name")
    elif record_type in _HEX_FIELDS and _HEX_FIELDS[record_type] not in exact:
        _hex_decode(values, origs, _HEX_FIELDS[record_type])
    # In a clean plain body a value is its token without the quotes: that is the exact
    # text already, unless an unquoted token was hex (so only hex-looking values look back).
    plain_clean = clean and type(origs) is _PlainTokens
    for key in exact:
        value = values.get(key)
        if value is not None:
            if plain_clean and _UPPER_HEX.fullmatch(value) is None:
                continue
            orig = origs[key]
            if clean and orig[:1] == '"':
                values[key] = orig[1:-1]  # nothing to escape in a clean body
            else:
                values[key] = _exact_text(orig)
        elif f'{key}="' in text and (kept := _last_quoted_token(text, key)) is not None:
            values[key] = _exact_text(kept)
    return Interpreted(data=values, keys=keys, plain=type(origs) is _PlainTokens)


def interpret_body(record_type: int, body: bytes, exact: tuple[str, ...]) -> Interpreted:
    """:func:`interpret` of a record body (or a run of its tokens); no memo, fresh result."""
    return _interpret(record_type, body, exact)


# Fields some step other than the per-call ones reads (unset ids, subject context, rule
# keys, hex or exact text), that nest (msg), or that the result would overwrite in place.
_NOT_CALL_HEAD_FIELDS = frozenset(
    ("auid", "old-auid", "ses", "subj", "result", "key", "cwd", "exe", "comm", "msg")
)
_NO_TOKENS: dict[str, str] = {}


def interpret_call_head(head: bytes) -> dict[str, str] | None:
    """What :func:`interpret` of a whole SYSCALL record makes of its head run of tokens.

    The head is ``arch syscall success exit a0 … pid``; only its per-call steps apply
    (result, errno name, arch and syscall names) when it is plain, printable ASCII without
    quotes or '%', drops no value, and holds no field another step reads. None otherwise.
    """
    if b'"' in head or head.translate(None, _PASSES_ESCAPE):
        return None
    text = head.decode("ascii")
    if _PLAIN_BODY.fullmatch(text) is None:
        return None
    flat = text.replace(" ", "=").split("=")
    keys = flat[::2]
    values = dict(zip(keys, flat[1::2], strict=False))  # equal lengths: the body matched
    if (
        len(values) != len(keys)
        or not _NOT_CALL_HEAD_FIELDS.isdisjoint(values)
        or not _DROPPED_VALUES.isdisjoint(values.values())
    ):
        return None
    _result(values)
    exit_value = values.get("exit")
    if exit_value is not None:
        _exit_name(values, exit_value)
    _syscall_fields(values, _NO_TOKENS, decode_exe=False)
    return values


def _last_quoted_token(text: str, key: str) -> str | None:
    """The token of ``key`` if it was quoted: go-libaudit drops ``?``, ``(null)`` and
    quote-only values, but the kernel quotes only real text (a file named ``?``), so for
    user-chosen text that value stays (``""`` stays dropped: nothing to show)."""
    tokens = [orig for name, orig in _FIELDS.findall(text) if name == key]
    return tokens[-1] if tokens and tokens[-1][:1] == '"' and len(tokens[-1]) > 2 else None
