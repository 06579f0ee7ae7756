"""Typed sink configuration, validated with errors that name the offending key.

A sink is configured by one ``[[sinks]]`` TOML table or one command-line argument
``TYPE:TARGET`` (see :func:`sinks.parse_sink_arg`). Keys common to every sink type
(``type``, ``name``, ``when_full``, ``queue_max_events``) live on :class:`SinkConfig`;
the rest stay in ``SinkConfig.options`` and are validated by the sink type itself
(``file_output_config`` for ``jsonl`` and ``file``; ``sinks.kafka`` for ``kafka``) with
the ``option_*`` helpers below, so every error reads ``sinks[archive].max_bytes: ...``.

Units are in the key names: ``*_bytes``, ``*_events``, ``*_ms``, ``keep_files``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sinks.base import SinkError

WhenFull = Literal["block", "drop_newest"]
WHEN_FULL_CHOICES: tuple[WhenFull, ...] = ("block", "drop_newest")

DEFAULT_QUEUE_MAX_EVENTS = 10_000
DEFAULT_BUFFER_BYTES = 1 << 20  # one large write per MiB: syscalls, not JSON, dominate otherwise
DEFAULT_KEEP_FILES = 5
# Each rotation looks for every PATH.i and PATH.i.gz up to it: 20,000 lstat calls at this
# bound, an endless loop at 10**12.
MAX_KEEP_FILES = 10_000

_COMMON_KEYS = frozenset({"type", "name", "when_full", "queue_max_events"})
_FILE_OUTPUT_KEYS = frozenset(
    {"path", "max_bytes", "keep_files", "compress", "fsync", "buffer_bytes"}
)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """One configured sink: the keys every type shares, plus its type-specific options."""

    type: str
    name: str
    when_full: WhenFull = "block"
    queue_max_events: int = DEFAULT_QUEUE_MAX_EVENTS
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """Prefix for error messages about this sink's keys."""
        return f"sinks[{self.name}]"


@dataclass(frozen=True, slots=True)
class FileOutputConfig:
    """Options of the sinks that write lines to a path (``jsonl`` and ``file``).

    ``path`` ``-`` is stdout. ``max_bytes`` 0 never rotates; otherwise the file is
    rotated before a write would make it exceed ``max_bytes`` (a single event larger
    than that goes alone into a fresh file). ``keep_files`` rotated files are kept
    (``PATH.1`` newest … ``PATH.N``), gzip-compressed (``PATH.1.gz``) when
    ``compress``. ``buffer_bytes`` is how much is gathered before one write(2);
    0 writes every event at once. ``fsync`` makes :meth:`flush` also fsync(2).
    """

    path: str
    max_bytes: int = 0
    keep_files: int = DEFAULT_KEEP_FILES
    compress: bool = False
    fsync: bool = False
    buffer_bytes: int = DEFAULT_BUFFER_BYTES


def option_int(
    options: Mapping[str, object],
    key: str,
    where: str,
    default: int,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    """Return ``options[key]`` as an int >= ``minimum`` (and <= ``maximum``); booleans are
    not integers."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SinkError(f"{where}.{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise SinkError(f"{where}.{key}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SinkError(f"{where}.{key}: must be at most {maximum}, got {value}")
    return value


def option_bool(options: Mapping[str, object], key: str, where: str, default: bool) -> bool:
    """Return ``options[key]`` as a bool (TOML ``true``/``false`` only)."""
    value = options.get(key, default)
    if not isinstance(value, bool):
        raise SinkError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def option_str(
    options: Mapping[str, object], key: str, where: str, default: str | None = None
) -> str:
    """Return ``options[key]`` as a non-empty str; a missing key without default is an error."""
    value = options.get(key, default)
    if value is None:
        raise SinkError(f"{where}.{key}: required")
    if not isinstance(value, str) or not value:
        raise SinkError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def check_known_keys(options: Mapping[str, object], known: frozenset[str], where: str) -> None:
    """Reject keys a sink type does not know, listing the ones it does."""
    for key in options:
        if key not in known:
            names = ", ".join(sorted(known | _COMMON_KEYS))
            raise SinkError(f"{where}: unknown key {key!r} (known: {names})")


def sink_config_from_table(table: Mapping[str, object], index: int = 0) -> SinkConfig:
    """Build a :class:`SinkConfig` from one ``[[sinks]]`` table (``index`` names it in errors)."""
    if not isinstance(table, Mapping):
        raise SinkError(f"sinks[{index}]: expected a table, got {type(table).__name__}")
    where = f"sinks[{index}]"
    sink_type = option_str(table, "type", where)
    name = option_str(table, "name", where, default=sink_type)
    where = f"sinks[{name}]"
    when_full = option_str(table, "when_full", where, default="block")
    if when_full not in WHEN_FULL_CHOICES:
        raise SinkError(
            f"{where}.when_full: must be one of {', '.join(WHEN_FULL_CHOICES)}, got {when_full!r}"
        )
    queue_max = option_int(table, "queue_max_events", where, DEFAULT_QUEUE_MAX_EVENTS, minimum=1)
    options = {k: v for k, v in table.items() if k not in _COMMON_KEYS}
    return SinkConfig(
        type=sink_type,
        name=name,
        when_full=when_full,
        queue_max_events=queue_max,
        options=options,
    )


def file_output_config(cfg: SinkConfig) -> FileOutputConfig:
    """Validate the options of a ``jsonl`` or ``file`` sink."""
    where = cfg.where
    check_known_keys(cfg.options, _FILE_OUTPUT_KEYS, where)
    return FileOutputConfig(
        path=option_str(cfg.options, "path", where),
        max_bytes=option_int(cfg.options, "max_bytes", where, 0),
        keep_files=option_int(
            cfg.options, "keep_files", where, DEFAULT_KEEP_FILES, maximum=MAX_KEEP_FILES
        ),
        compress=option_bool(cfg.options, "compress", where, False),
        fsync=option_bool(cfg.options, "fsync", where, False),
        buffer_bytes=option_int(cfg.options, "buffer_bytes", where, DEFAULT_BUFFER_BYTES),
    )


def sink_configs_from_tables(tables: object) -> list[SinkConfig]:
    """Build every ``[[sinks]]`` table; sink names must be unique (they label metrics)."""
    if not isinstance(tables, list):
        raise SinkError(f"sinks: expected an array of tables, got {type(tables).__name__}")
    configs = [sink_config_from_table(table, index) for index, table in enumerate(tables)]
    seen: set[str] = set()
    for cfg in configs:
        if cfg.name in seen:
            raise SinkError(f"{cfg.where}.name: duplicate sink name; give each sink its own name")
        seen.add(cfg.name)
    return configs
