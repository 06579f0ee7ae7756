"""Configuration: TOML in, typed dataclasses out, every mistake named with key and file."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
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
    # Followed (one file): its acknowledged read position is kept here, and a restart
    # resumes there (receiver/checkpoint.py); "" = off, a new follow reads from the start.
    position_file: str = ""
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


# The replay buffer keeps at least this many records (4 batches of 512, the measured
# minimum below, MIN_REPLAY_BUFFER_BATCHES): with smaller batches it keeps more of them,
# or a replay's every batch would wait for an acknowledgement that cannot come yet, and
# the assemblers (which keep a quarter of it open) would cut events at batch ends.
MIN_REPLAY_BUFFER_RECORDS = 2048
# A file source's full buffer that spans no more of the log's event time than the tree
# keeper's reorder window cannot be acknowledged yet (the window lets its oldest events go
# only once later records pass them): it grows past its bound instead of waiting, up to
# the records the default buffer holds (receiver/redelivery.py). What can be resent after
# a crash, and so what the tree keeper's duplicate filter covers, includes that growth.
GROWN_REPLAY_BUFFER_RECORDS = FILE_BATCHING.batch_max_records * FILE_BATCHING.replay_buffer_batches


def batching(receiver: ReceiverConfig) -> Batching:
    """The batching in effect: a value left 0 in the config follows the source, and the
    replay buffer holds at least MIN_REPLAY_BUFFER_RECORDS records."""
    from_file = receiver.source == "file" and not receiver.follow
    default = FILE_BATCHING if from_file else LIVE_BATCHING
    batch_max = receiver.batch_max_records or default.batch_max_records
    kept = receiver.replay_buffer_batches or default.replay_buffer_batches
    return Batching(batch_max, max(kept, -(-MIN_REPLAY_BUFFER_RECORDS // batch_max)))


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
    # Live: how often /proc is listed to end processes killed by a signal (no exit record:
    # treekeeper/tree.py sweep_proc); 0: never.
    proc_sweep_ms: int = 10_000


class IntRange(NamedTuple):
    """The values an integer key may take, and why where a bound is not obvious."""

    low: int
    high: int
    zero_means: str = ""  # 0 is accepted too, meaning this (e.g. "by source")
    why_low: str = ""  # said when a value is below ``low``
    why_high: str = ""  # said when a value is above ``high``


# Assemblers: a fixed cap, not one derived from this host's CPUs, so that check-config
# answers the same on the host that writes a config and on the one that runs it. At
# ~35 MB each, 64 stay within a few GB; the tree keeper, one thread, is saturated long
# before (docs/performance.md), so more would only cost memory and processes.
MAX_ASSEMBLERS = 64
# A replay batch is acknowledged only once the batches after it have reached the tree
# keeper: the event open at its end completes in the next one, and that frame leaves the
# reorder window only when a later batch moves event time past it. Measured: with 2, every
# batch of any log waited ACK_WAIT_MAX_S (10 s, receiver/redelivery.py) for its
# acknowledgement; with 3, every batch of bench/gen_log.py's (512 records = 160 ms of
# event time, less than the 250 ms window); with 4 none did.
MIN_REPLAY_BUFFER_BATCHES = 4
# Below this the table evicts a running process's ancestors while it runs: a booted host
# has a few hundred processes, and the ancestry of each is up to ancestry_max_depth deep.
MIN_TREE_PROCESSES = 1024
HOUR_MS = 3_600_000
# The /proc sweep's shortest period: each costs ~1 us a listed pid and 8-16 us a live process.
MIN_PROC_SWEEP_MS = 100

# Every integer key's range. Past an upper bound a value overflows a C conversion or a
# ZeroMQ/socket option, makes a loop or a wait practically endless, or lets a queue grow
# until memory runs out; each bound is far above real use (deploy/auditstream.example.toml).
INT_RANGES: dict[tuple[str, str], IntRange] = {
    ("runtime", "hwm_messages"): IntRange(1, 65_536),
    ("receiver", "batch_max_records"): IntRange(1, 65_536, zero_means="by source"),
    ("receiver", "batch_max_ms"): IntRange(0, 60_000),
    ("receiver", "backlog_limit"): IntRange(0, 2**32 - 1),  # the kernel's u32
    ("receiver", "backlog_wait_time"): IntRange(0, 600_000),  # auditctl's bound (rules.py)
    ("receiver", "rate_limit"): IntRange(0, 2**32 - 1),
    ("receiver", "failure_mode"): IntRange(0, 2),
    ("receiver", "rcvbuf_bytes"): IntRange(1, 2**31 - 1),  # setsockopt's int
    ("receiver", "priority_boost"): IntRange(0, 20),
    ("receiver", "status_poll_ms"): IntRange(1, HOUR_MS),
    ("receiver", "replay_buffer_batches"): IntRange(
        MIN_REPLAY_BUFFER_BATCHES,
        16_384,
        zero_means="by source",
        why_low="with fewer, a replay waits 10 s for every batch's acknowledgement",
    ),
    ("assembler", "instances"): IntRange(
        1,
        MAX_ASSEMBLERS,
        why_high="each is a process of ~35 MB, and the tree keeper is saturated long before",
    ),
    ("assembler", "event_timeout_ms"): IntRange(0, HOUR_MS),
    ("assembler", "max_in_flight"): IntRange(1, 1_000_000),
    ("treekeeper", "exit_grace_ms"): IntRange(0, HOUR_MS),
    ("treekeeper", "ancestry_max_depth"): IntRange(0, 1024),
    ("treekeeper", "max_processes"): IntRange(
        MIN_TREE_PROCESSES,
        4_194_304,  # the kernel's PID_MAX_LIMIT: every pid a host can have
        why_low="a smaller table evicts a running process's ancestors while it runs",
    ),
    ("treekeeper", "state_max_age_ms"): IntRange(0, 7 * 24 * HOUR_MS),
    ("treekeeper", "reorder_window_ms"): IntRange(0, 600_000),
    ("treekeeper", "sinks_shutdown_timeout_ms"): IntRange(0, MAX_SINKS_SHUTDOWN_TIMEOUT_MS),
    ("treekeeper", "proc_sweep_ms"): IntRange(
        MIN_PROC_SWEEP_MS,
        HOUR_MS,
        zero_means="no sweep",
        why_low="each sweep lists /proc and reads the stat file of every live process",
    ),
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")  # any case, as logging takes them


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
    # logs.setup() passes it to logging in upper case: the names logging knows, any case.
    if cfg.runtime.log_level.upper() not in logging.getLevelNamesMapping():
        raise ConfigError(
            f"{where}: [runtime].log_level must be one of {', '.join(LOG_LEVELS)}, "
            f"got {cfg.runtime.log_level!r}"
        )
    for (section, key), allowed in INT_RANGES.items():
        _check_range(getattr(getattr(cfg, section), key), allowed, f"{where}: [{section}].{key}")
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
    if cfg.receiver.position_file:
        _check_position_file(cfg.receiver, f"{where}: [receiver].position_file")


def _check_position_file(receiver: ReceiverConfig, where: str) -> None:
    """A position file keeps the position in one followed log: meaningless elsewhere."""
    if receiver.source != "file" or not receiver.follow:
        raise ConfigError(
            f'{where}: only for a followed log: needs source = "file" and follow = true '
            f"(or replay --follow), got source {receiver.source!r}, follow = "
            f"{str(receiver.follow).lower()}"
        )
    if len(receiver.files) != 1 or receiver.files[0] == "-":
        raise ConfigError(
            f"{where}: keeps the position in one followed log: files must name exactly "
            f"one file (not -), got {receiver.files}"
        )


def _check_range(value: int, allowed: IntRange, where: str) -> None:
    if allowed.low <= value <= allowed.high or (allowed.zero_means and value == 0):
        return
    zero = f"0 ({allowed.zero_means}) or " if allowed.zero_means else ""
    why = allowed.why_low if value < allowed.low else allowed.why_high
    why = f": {why}" if why else ""
    raise ConfigError(f"{where} must be {zero}{allowed.low}..{allowed.high}, got {value}{why}")


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
        import tomllib  # here: ~1.5 ms of every start, and the stages read the JSON

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
