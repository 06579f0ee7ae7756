"""Split an audit record body into its fields, as go-libaudit's auparse does.

``parse_fields`` gives the ``values`` (quotes stripped) and the raw tokens of a body that
is already text (see :mod:`assembler.interpret`). Most kernel records are *plain* (every
token ``key=value`` at single spaces, values without ``=``, spaces or ``'``, quoted whole
or not at all): those are split with C-level str methods; anything else takes
go-libaudit's field regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from assembler.parse import FIELD_REGEX

# go-libaudit's field regex over text (bytes decoded with surrogateescape, lossless).
FIELDS = re.compile(FIELD_REGEX)
# Values go-libaudit drops: the field is as good as absent.
DROPPED_VALUES = frozenset(("", "?", "?,", "(null)"))

# A body the plain split handles: space-separated key=value, values without '=', spaces or
# single quotes, double-quoted as a whole or not at all (the usual kernel record).
# Possessive quantifiers: nothing here can match by giving characters back, so the
# engine need not remember where it could have.
_PLAIN_FIELD = r'[a-z0-9_-]++=(?:"[^"\'\s=]*+"|[^"\'\s=]++)'
PLAIN_BODY = re.compile(f"{_PLAIN_FIELD}(?: {_PLAIN_FIELD})*+")


class PlainTokens(Mapping[str, str]):
    """The raw tokens of a plain body, rebuilt on demand instead of a second dict per record.

    A plain token is its value, with its double quotes put back if the body has
    ``key="`` at a token start (values hold no spaces or '=', so nothing else can).
    """

    __slots__ = ("_text", "_values")

    def __init__(self, text: str, values: dict[str, str]) -> None:
        self._text = text
        self._values = values  # the split's values: the steps change theirs, not these

    def __getitem__(self, key: str) -> str:
        value = self._values[key]
        quoted = f'{key}="'
        if self._text.startswith(quoted) or f" {quoted}" in self._text:
            return f'"{value}"'
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def parse_fields(text: str) -> tuple[dict[str, str], Mapping[str, str]]:
    """go-libaudit's fieldMap: ``values`` (quotes stripped) and ``origs`` (raw tokens).

    Fields in order, later duplicates overwriting, ``?``/``(null)``/empty dropped,
    ``msg='…'`` merged in place.
    """
    if PLAIN_BODY.fullmatch(text) is not None:
        # Every token is key=value with no '=' in the value: split the quote-free text at
        # spaces and '=' with C-level str methods.
        unquoted = text.replace('"', "") if '"' in text else text
        flat = unquoted.replace(" ", "=").split("=")
        keys = flat[::2]
        values = dict(zip(keys, flat[1::2], strict=False))  # equal lengths: the body matched
        if len(values) == len(keys) and "msg" not in values:
            if not DROPPED_VALUES.isdisjoint(values.values()):
                for key in [k for k, v in values.items() if v in DROPPED_VALUES]:
                    del values[key]
            return values, PlainTokens(text, values.copy())
    pairs = FIELDS.findall(text)
    origs = dict(pairs)
    if len(origs) == len(pairs) and "msg" not in origs:
        # Fast path: no duplicates, nothing nested (the usual kernel record).
        values = {key: orig.strip("'\" ") for key, orig in origs.items()}
        if DROPPED_VALUES.isdisjoint(values.values()):
            return values, origs
        for key in [k for k, v in values.items() if v in DROPPED_VALUES]:
            del values[key], origs[key]
        return values, origs
    # An explicit stack instead of recursion: msg=msg=msg=… nests once per 4 bytes.
    values, origs = {}, {}
    stack = [iter(pairs)]
    while stack:
        for key, orig in stack[-1]:
            value = orig.strip("'\" ")
            if value in DROPPED_VALUES:
                continue
            if key == "msg":
                stack.append(iter(FIELDS.findall(value)))
                break
            values[key] = value
            origs[key] = orig
        else:
            stack.pop()
    return values, origs
