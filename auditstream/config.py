"""Configuration: TOML in, typed dataclasses out, every mistake named with key and file."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from auditstream import privilege

SOURCES = ("netlink", "multicast", "file", "stdin")  # plus "unix:/path"


class ConfigError(ValueError):
    """A configuration mistake; the message names the file and the key."""


@dataclass(slots=True)
class RuntimeConfig:
    dir: str = ""  # private 0700 directory for sockets and state; "" picks one
    log_format: str = "text"  # text | json
    log_level: str = "info"
    assembler_endpoints: list[str] = field(default_factory=list)  # "" derives ipc:// in dir
    treekeeper_endpoint: str = ""
    hwm_messages: int = 64  # ZeroMQ high-water mark per hop, in batches
    metrics_listen: str = ""  # "127.0.0.1:9464" serves Prometheus text
    user: str = ""  # run as root: assembler(s) and tree keeper run as this user, no capabilities
    group: str = ""  # their group ("" = the user's primary group); the runtime dir is root:group


@dataclass(slots=True)
class ReceiverConfig:
    source: str = "netlink"
    files: list[str] = field(default_factory=list)
    follow: bool = False
    progress: bool = False
    record: str = ""  # write every raw record received to this file, replayable
    batch_max_records: int = 0  # 0: by source (batching())
    batch_max_ms: int = 20
    rules_files: list[str] = field(default_factory=list)  # [] = the packaged default rules
    takeover: bool = False
    backlog_limit: int = 8192
    backlog_wait_time: int = 60000  # kernel units: jiffies/1000 = ms at HZ=1000
    rate_limit: int = 0
    failure_mode: int = 1
    rcvbuf_bytes: int = 64 << 20
    # Kernel sources: lower the receiver's nice value by this much (auditd's priority_boost,
    # same default): kauditd gives a full socket only 100 ms, so the reader must get the CPU.
    priority_boost: int = 4
    when_full: str = "block"  # block | drop_newest
    status_poll_ms: int = 1000
    # Batches per assembler kept until the tree keeper acknowledges them (redelivery after
    # a crash, docs/recovery.md): a file source waits when full, a live one stops protecting.
    replay_buffer_batches: int = 0  # 0: by source (batching())
    cpu_affinity: list[int] = field(default_factory=list)  # CPU numbers to pin to; [] = any


class Batching(NamedTuple):
    """The receiver's batch size and the batches it keeps per assembler, as in effect."""

    batch_max_records: int
    replay_buffer_batches: int


# Where the config leaves them 0. Live, every frame wakes each stage, and 2048-record
# batches took ~15 % less CPU per event than 512 at 30,000 events/s; from a file, where the
# stages never wait, 512 measured best (docs/performance.md, twenty-sixth pass). Both keep
# 131,072 records per assembler.
LIVE_BATCHING = Batching(2048, 64)
FILE_BATCHING = Batching(512, 256)


def batching(receiver: ReceiverConfig) -> Batching:
    """The batching in effect: a value left 0 in the config follows the source."""
    from_file = receiver.source == "file" and not receiver.follow
    default = FILE_BATCHING if from_file else LIVE_BATCHING
    return Batching(
        receiver.batch_max_records or default.batch_max_records,
        receiver.replay_buffer_batches or default.replay_buffer_batches,
    )


@dataclass(slots=True)
class AssemblerConfig:
    instances: int = 1
    event_timeout_ms: int = 2000
    max_in_flight: int = 1000
    resolve_ids: bool = False  # uid/gid names from this host's user database
    cpu_affinity: list[int] = field(default_factory=list)  # assembler i: [i % len]; [] = any


# Below the supervisor's stop grace (60 s, auditstream/supervisor.py STOP_GRACE_S): the tree
# keeper must get to count what it discards before it is killed.
MAX_SINKS_SHUTDOWN_TIMEOUT_MS = 50_000


@dataclass(slots=True)
class TreekeeperConfig:
    enabled: bool = True
    exit_grace_ms: int = 1000
    ancestry_max_depth: int = 16
    max_processes: int = 131072
    state_file: str = ""
    state_max_age_ms: int = 600_000
    reorder_window_ms: int = (
        250  # at most (live: until every assembler has passed them), so forks come before execs
    )
    cpu_affinity: list[int] = field(default_factory=list)  # CPU numbers to pin to; [] = any
    # At the stop: how long the sinks may take to write what is queued for them; what is
    # left then is counted as discarded (shutdown_timeout) and logged (sinks/fanout.py).
    sinks_shutdown_timeout_ms: int = 5000


@dataclass(slots=True)
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    assembler: AssemblerConfig = field(default_factory=AssemblerConfig)
    treekeeper: TreekeeperConfig = field(default_factory=TreekeeperConfig)
    sinks: list[dict[str, Any]] = field(default_factory=list)
    source_path: str = ""  # the file this came from, for messages


_SECTIONS: dict[str, type] = {
    "runtime": RuntimeConfig,
    "receiver": ReceiverConfig,
    "assembler": AssemblerConfig,
    "treekeeper": TreekeeperConfig,
}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    """Build and validate a Config from parsed TOML/JSON."""
    cfg = Config(source_path=source)
    for key, value in data.items():
        if key == "sinks":
            if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
                raise ConfigError(f"{source}: [[sinks]] must be an array of tables")
            cfg.sinks = [dict(s) for s in value]
        elif key == "source_path":
            continue
        elif key in _SECTIONS:
            setattr(cfg, key, _section(_SECTIONS[key], value, f"{source}: [{key}]"))
        else:
            raise ConfigError(f"{source}: unknown section or key {key!r}")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    where = cfg.source_path or "<config>"
    src = cfg.receiver.source
    if src not in SOURCES and not src.startswith("unix:"):
        raise ConfigError(
            f"{where}: [receiver].source {src!r} is not one of {SOURCES} or unix:PATH"
        )
    if cfg.receiver.when_full not in ("block", "drop_newest"):
        raise ConfigError(f"{where}: [receiver].when_full must be block or drop_newest")
    if cfg.runtime.log_format not in ("text", "json"):
        raise ConfigError(f"{where}: [runtime].log_format must be text or json")
    for name, value in (
        ("[assembler].instances", cfg.assembler.instances),
        ("[assembler].max_in_flight", cfg.assembler.max_in_flight),
        ("[runtime].hwm_messages", cfg.runtime.hwm_messages),
    ):
        if value < 1:
            raise ConfigError(f"{where}: {name} must be at least 1, got {value}")
    for name, value in (
        ("[receiver].batch_max_records", cfg.receiver.batch_max_records),
        ("[receiver].replay_buffer_batches", cfg.receiver.replay_buffer_batches),
    ):
        if value < 0:
            raise ConfigError(f"{where}: {name} must be 0 (by source) or more, got {value}")
    if not 0 <= cfg.receiver.priority_boost <= 20:
        raise ConfigError(
            f"{where}: [receiver].priority_boost must be 0..20, got {cfg.receiver.priority_boost}"
        )
    if cfg.assembler.event_timeout_ms < 0 or cfg.treekeeper.exit_grace_ms < 0:
        raise ConfigError(f"{where}: timeouts must not be negative")
    if not 0 <= cfg.treekeeper.sinks_shutdown_timeout_ms <= MAX_SINKS_SHUTDOWN_TIMEOUT_MS:
        raise ConfigError(
            f"{where}: [treekeeper].sinks_shutdown_timeout_ms must be "
            f"0..{MAX_SINKS_SHUTDOWN_TIMEOUT_MS}, got {cfg.treekeeper.sinks_shutdown_timeout_ms}"
        )
    if cfg.runtime.user or cfg.runtime.group:
        try:
            privilege.resolve_account(cfg.runtime.user, cfg.runtime.group)
        except privilege.AccountError as err:
            raise ConfigError(f"{where}: [runtime].{err.key}: {err}") from None
    for section in ("receiver", "assembler", "treekeeper"):
        cpus = getattr(cfg, section).cpu_affinity
        _check_cpus(cpus, f"{where}: [{section}].cpu_affinity")
    if cfg.runtime.metrics_listen:
        parse_listen(cfg.runtime.metrics_listen, f"{where}: [runtime].metrics_listen")


def _check_cpus(cpus: list[int], where: str) -> None:
    count = os.cpu_count() or 1
    for cpu in cpus:
        if not 0 <= cpu < count:
            raise ConfigError(
                f"{where}: CPU {cpu} does not exist (this machine has CPUs 0..{count - 1})"
            )


def parse_listen(address: str, where: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as (host, port); a ConfigError names ``where``."""
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        valid_host = ":" in host
    else:
        valid_host = bool(host) and ":" not in host
    valid_host = valid_host and all(c.isalnum() or c in ".-:_" for c in host)
    if not sep or not valid_host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f'{where}: {address!r} is not HOST:PORT (e.g. "127.0.0.1:9464", "[::1]:9464")'
        )
    return host, int(port_text)


def _refuse_world_readable_secrets(path: Path, text: str) -> None:
    lowered = text.lower()
    if any(word in lowered for word in ("password", "secret", "sasl.", "ssl.key")):
        mode = path.stat().st_mode
        if mode & stat.S_IROTH:
            raise ConfigError(
                f"{path}: holds secrets but is world-readable (mode {stat.filemode(mode)});"
                f" run: chmod o-r {path}"
            )


def load(path: str | os.PathLike[str]) -> Config:
    """Read a TOML (or the supervisor's JSON) config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: config is not UTF-8 text") from err
    if p.suffix == ".json":
        data = json.loads(text)
    else:
        _refuse_world_readable_secrets(p, text)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML: {err}") from err
    return from_dict(data, str(p))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def write_json(cfg: Config, path: Path) -> None:
    """The supervisor hands each stage its effective config through a private file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(to_dict(cfg), fh)
