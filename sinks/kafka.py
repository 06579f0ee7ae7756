"""Kafka sink: enriched events as JSON messages on a topic, counted only when Kafka has them.

Built on confluent-kafka (librdkafka). The producer is idempotent with acks=all, so retries
after a broker outage neither lose nor duplicate messages, and it waits out outages
(message_timeout_ms = 0 means "no time limit"): an outage fills the local queue and then
pushes back on the caller (`when_full = "block"`) or drops the newest events, counted and
remembered for a marker (`when_full = "drop_newest"`).

An event counts as sent only when the brokers have acknowledged it: once it has left
librdkafka's queue (``len(producer)``, which holds it until then) without a failed delivery
report. Only failures are reported (``delivery.report.only.error``): a report per message
was a Python call and a Message object each, ~a third of the sink's thread. Reports are
served from write_batch() and flush() in the caller's thread (the sink is single-threaded,
like every sink), so the caller should flush() now and then when idle.

Shutdown is bounded: stop_by(deadline) (thread-safe; the fan-out calls it at close, or when a
stop signal finds the pipeline blocked on this sink) ends every wait at that deadline. What
then finds no room is discarded (shutdown_timeout), and close() purges what librdkafka still
holds, counted (undelivered_at_exit): sent + discarded == received, always.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, cast

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from auditstream.doc_text import DOC_TEXT, doc_line
from auditstream.hostnode import host_name
from auditstream.logs import RateLimitedLog
from auditstream.native import load_native
from sinks.base import Event, SinkError, SinkStats
from sinks.config import SinkConfig
from sinks.rotation import SinkWriteError

log = logging.getLogger(__name__)

KeyMode = Literal["host", "container", "process_tree_root"]
KEY_MODES: Final = ("host", "container", "process_tree_root")
COMPRESSIONS: Final = ("none", "gzip", "snappy", "lz4", "zstd")
ACKS: Final = ("all", "-1", "0", "1")
WHEN_FULL: Final = ("block", "drop_newest")
SCHEMA_VERSION: Final = b"1"
LIBRDKAFKA_VALUE_TYPES: Final = (str, int, float, bool)

# librdkafka settings that carry credentials; their values never reach a log line or repr.
SECRET_WORDS: Final = ("password", "secret")
SECRET_SETTINGS: Final = frozenset({"ssl.key.pem", "sasl.oauthbearer.config"})

# librdkafka settings that the sink's own options control; set those options instead.
RESERVED_SETTINGS: Final = {
    "bootstrap.servers": "brokers",
    "metadata.broker.list": "brokers",
    "compression.type": "compression",
    "compression.codec": "compression",
    "acks": "acks",
    "request.required.acks": "acks",
    "linger.ms": "linger_ms",
    "queue.buffering.max.ms": "linger_ms",
    "batch.size": "batch_max_bytes",
    "queue.buffering.max.messages": "queue_max_events",
    "message.timeout.ms": "message_timeout_ms",
    "delivery.timeout.ms": "message_timeout_ms",
    "enable.idempotence": "acks",
}

# Kafka's legal topic names (the broker rejects anything else).
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

# Bound of the per-key and per-header caches (cleared when full; they only save encoding).
CACHE_MAX_ENTRIES: Final = 4096

# How long one poll() may block while flushing, so the deadline is checked often.
POLL_SLICE_S: Final = 0.1
# At close, how long purged messages' delivery reports may take to come back (they are
# served at once; what has not come back by then is counted from the queue length).
PURGE_WAIT_S: Final = 0.5
# librdkafka's own log lines (FAIL: connection refused, per broker, per retry): the first
# few of each facility, then one in this many, with the count.
LIBRDKAFKA_LOG_FIRST: Final = 3
LIBRDKAFKA_LOG_EVERY: Final = 100

# Delivery report errors that mean "purged by close()", not a broker failure.
PURGE_ERRORS: Final = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

# One run of consecutive drops: (count, key of the first dropped event, key of the last).
DropSpan = tuple[int, list[Any], list[Any]]
Headers = list[tuple[str, str | bytes | None]]


def is_secret_setting(name: str) -> bool:
    """True if a librdkafka setting holds a credential (passwords, secrets, private keys)."""
    lowered = name.lower()
    return lowered in SECRET_SETTINGS or any(word in lowered for word in SECRET_WORDS)


def parse_kafka_target(target: str) -> tuple[list[str], str]:
    """Split the CLI form "broker1:9092,broker2:9092/topic" into (brokers, topic)."""
    brokers_part, slash, topic = target.rpartition("/")
    if not slash:
        raise SinkError(f"kafka target {target!r}: expected BROKER[,BROKER...]/TOPIC")
    brokers = [broker.strip() for broker in brokers_part.split(",")]
    if not brokers_part or any(not b or any(c.isspace() for c in b) for b in brokers):
        raise SinkError(f"kafka target {target!r}: bad broker list {brokers_part!r}")
    if not TOPIC_NAME.fullmatch(topic):
        raise SinkError(f"kafka target {target!r}: bad topic name {topic!r}")
    return brokers, topic


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """The sink's TOML options, validated; `librdkafka` is passed through to the producer."""

    brokers: tuple[str, ...]
    topic: str
    key: KeyMode = "host"
    compression: str = "zstd"
    acks: str = "all"
    linger_ms: int = 5
    batch_max_bytes: int = 1_000_000
    queue_max_events: int = 100_000
    message_timeout_ms: int = 0  # 0 = wait for ever: an outage must not drop events
    flush_timeout_ms: int = 30_000
    connect_timeout_ms: int = 10_000
    when_full: Literal["block", "drop_newest"] = "block"
    librdkafka: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name == "librdkafka":
                value = masked_settings(value)
            shown.append(f"{f.name}={value!r}")
        return f"KafkaOptions({', '.join(shown)})"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], where: str = "sinks[kafka]") -> KafkaOptions:
        """Validate a dict of TOML options; SinkError names the sink (``where``) and the
        first bad key, as ``sinks[NAME].KEY: ...``."""
        known = {f.name for f in fields(cls)}
        for name in options:
            if name not in known:
                names = ", ".join(sorted(known | {"type", "name", "target"}))
                raise SinkError(f"{where}: unknown key {name!r} (known: {names})")
        for required in ("brokers", "topic"):
            if required not in options:
                raise SinkError(f"{where}.{required}: required")
        return cls(
            brokers=_brokers_option(options["brokers"], where),
            topic=_topic_option(options["topic"], where),
            key=cast(KeyMode, _choice_option(options, "key", KEY_MODES, "host", where)),
            compression=_choice_option(options, "compression", COMPRESSIONS, "zstd", where),
            acks=_choice_option(options, "acks", ACKS, "all", where),
            linger_ms=_int_option(options, "linger_ms", 5, 0, where),
            batch_max_bytes=_int_option(options, "batch_max_bytes", 1_000_000, 1, where),
            queue_max_events=_int_option(options, "queue_max_events", 100_000, 1, where),
            message_timeout_ms=_int_option(options, "message_timeout_ms", 0, 0, where),
            flush_timeout_ms=_int_option(options, "flush_timeout_ms", 30_000, 1, where),
            connect_timeout_ms=_int_option(options, "connect_timeout_ms", 10_000, 1, where),
            when_full=cast(
                Literal["block", "drop_newest"],
                _choice_option(options, "when_full", WHEN_FULL, "block", where),
            ),
            librdkafka=_librdkafka_option(options.get("librdkafka", {}), where),
        )


def masked_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of librdkafka settings with credential values replaced by "***"."""
    return {k: "***" if is_secret_setting(k) else v for k, v in settings.items()}


def _brokers_option(value: Any, where: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise SinkError(f"{where}.brokers: expected a non-empty string or list, got {value!r}")
    brokers = tuple(b.strip() if isinstance(b, str) else "" for b in items)
    if any(not b or any(c.isspace() for c in b) for b in brokers):
        raise SinkError(f"{where}.brokers: bad entry in {value!r}")
    return brokers


def _topic_option(value: Any, where: str) -> str:
    if not isinstance(value, str) or not TOPIC_NAME.fullmatch(value):
        raise SinkError(
            f"{where}.topic: not a legal Kafka topic name (letters, digits, '.', '_', '-'; "
            f"at most 249): {value!r}"
        )
    return value


def _choice_option(
    options: Mapping[str, Any], name: str, choices: Sequence[str], default: str, where: str
) -> str:
    value = options.get(name, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # acks = 1 in TOML
    if value not in choices:
        raise SinkError(f"{where}.{name}: must be one of {', '.join(choices)}, got {value!r}")
    return cast(str, value)


def _int_option(
    options: Mapping[str, Any], name: str, default: int, minimum: int, where: str
) -> int:
    value = options.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SinkError(f"{where}.{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _librdkafka_option(value: Any, where: str) -> dict[str, str | int | float | bool]:
    if not isinstance(value, Mapping):
        raise SinkError(f"{where}.librdkafka: expected a table of librdkafka settings")
    settings: dict[str, str | int | float | bool] = {}
    for name, setting in value.items():
        if not isinstance(name, str):
            raise SinkError(f"{where}.librdkafka: setting name {name!r} is not a string")
        if name in RESERVED_SETTINGS:
            raise SinkError(
                f"{where}.librdkafka: setting {name!r} is controlled by the option "
                f"{RESERVED_SETTINGS[name]!r}; set that instead"
            )
        if not isinstance(setting, LIBRDKAFKA_VALUE_TYPES):
            raise SinkError(f"{where}.librdkafka: setting {name!r} must be a string or number")
        settings[name] = setting
    return settings


def sink_table(cfg: SinkConfig) -> dict[str, Any]:
    """The registry table of a configured kafka sink: its options plus the fan-out's
    when_full/queue_max_events, which also bound the producer's own local queue."""
    return {
        "type": cfg.type,
        "name": cfg.name,
        "when_full": cfg.when_full,
        "queue_max_events": cfg.queue_max_events,
        **cfg.options,
    }


def options_from_config(config: Mapping[str, Any]) -> tuple[str, KafkaOptions]:
    """(name, options) of a registry config table: the options plus optional `type`, `name`,
    and `target` ("BROKERS/TOPIC", the CLI form) in place of `brokers` and `topic`.
    The one validation of a kafka sink's options: the sink and check-config both use it."""
    options = dict(config)
    sink_type = options.pop("type", "kafka")
    name = options.pop("name", "kafka")
    if not isinstance(name, str) or not name:
        raise SinkError(f"sinks[kafka].name: expected a non-empty string, got {name!r}")
    where = f"sinks[{name}]"
    if sink_type != "kafka":
        raise SinkError(f"{where}.type: expected 'kafka', got {sink_type!r}")
    if "target" in options:
        target = options.pop("target")
        if not isinstance(target, str):
            raise SinkError(f"{where}.target: expected a string, got {target!r}")
        options["brokers"], options["topic"] = parse_kafka_target(target)
    return name, KafkaOptions.from_mapping(options, where)


def producer_settings(opts: KafkaOptions) -> dict[str, Any]:
    """librdkafka's configuration for these options, without callbacks or logger."""
    return {
        "client.id": "auditstream",
        "bootstrap.servers": ",".join(opts.brokers),
        "enable.idempotence": opts.acks in ("all", "-1"),
        "acks": opts.acks,
        "compression.type": opts.compression,
        "linger.ms": opts.linger_ms,
        "batch.size": opts.batch_max_bytes,
        "queue.buffering.max.messages": opts.queue_max_events,
        "message.timeout.ms": opts.message_timeout_ms,
        # CRC32 of the key as librdkafka's default (consistent_random), so a key's partition
        # is the same, but the empty key (a doc without host.name) on one partition rather
        # than a random one each time: a replayed log without node= stays in order.
        "partitioner": "consistent",
        # Sent counts are derived (KafkaSink._serve): failures alone need a report.
        "delivery.report.only.error": True,
        **opts.librdkafka,
    }


def check_sink_config(cfg: SinkConfig) -> KafkaOptions:
    """Validate a kafka sink as the tree keeper will build it, without contacting a broker:
    the options, then librdkafka's own check of the producer settings (unknown or bad
    `librdkafka` settings, conflicts such as idempotence with acks). SinkError names the
    sink and key."""
    name, opts = options_from_config(sink_table(cfg))
    settings = offline_check_settings(producer_settings(opts))
    settings["logger"] = logging.getLogger(f"{__name__}.check")
    try:
        Producer(settings)
    except (KafkaException, ValueError, TypeError) as exc:
        raise SinkError(
            f"sinks[{name}].librdkafka: librdkafka refuses the producer settings: "
            f"{_scrub_text(exc, opts)}"
        ) from None
    return opts


def offline_check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` for a producer that checks them and does nothing else: no broker
    (without bootstrap.servers librdkafka connects nowhere), and none of the work librdkafka
    starts at client creation. With GSSAPI it runs ``sasl.kerberos.kinit.cmd`` at once (a
    timer on creation): a relogin time of 0 turns that refresh off, so kinit never runs.
    With OAUTHBEARER ``method=oidc`` it POSTs the client secret to the token endpoint: a
    token callback of ours answers instead (the OIDC settings are still checked)."""
    checked = {**settings, "sasl.kerberos.min.time.before.relogin": 0}
    checked.pop("bootstrap.servers", None)
    mechanism = checked.get("sasl.mechanisms", checked.get("sasl.mechanism", ""))
    method = str(checked.get("sasl.oauthbearer.method", "default")).lower()
    if str(mechanism).upper() == "OAUTHBEARER" and method == "oidc":
        # confluent-kafka waits for a callback's token at creation: give it one at once.
        checked["oauth_cb"] = _offline_token
    return checked


def _offline_token(_config: object) -> tuple[str, float]:
    """A token for the offline check's producer, which never authenticates anywhere."""
    return "offline-check", time.time() + 60


def _scrub_text(exc: BaseException, opts: KafkaOptions) -> str:
    """An exception's text with any credential value blanked out."""
    text = str(exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc)
    for name, value in opts.librdkafka.items():
        if is_secret_setting(name) and str(value):
            text = text.replace(str(value), "***")
    return text


class LibrdkafkaLog:
    """The logger handed to librdkafka: its lines go to ``log`` rate-limited per facility
    (an outage of three brokers gave 18-32 FAIL lines), at WARNING: librdkafka retries,
    and what is lost is counted and logged by the sink itself."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.limited = RateLimitedLog(
            logger, first=LIBRDKAFKA_LOG_FIRST, every=LIBRDKAFKA_LOG_EVERY
        )

    def log(self, level: int, msg: str, *args: object) -> None:
        """Called by confluent-kafka as ``log(level, "%s [%s] %s", facility, client, text)``."""
        if level < logging.WARNING:
            self.logger.log(level, msg, *args)
            return
        facility = str(args[0]) if args else "librdkafka"
        self.limited.warning(facility, msg, *args)


# The jsonl sink's C line encoder (auditstream/csrc/doc_text.c): a batch's docs as JSON in one
# call, a split doc's text spliced around its enriched ``process`` (no whole doc decoded or
# encoded again). A message's value is its line without the newline.
_NATIVE_LINES: Callable[..., tuple[bytes, int]] | None = load_native(
    "auditstream.native_doc_text", "encode_lines"
)
_EVENT_OBJECT = b'"event":{'


def text_event(before: bytes) -> Mapping[str, Any] | None:
    """The ``event`` object of a split doc, read from its text before ``process`` (the
    assembler writes it there, a flat object of scalars and string lists, so the first
    ``},"`` after it ends it); None when that slice is not one JSON object (the caller then
    decodes the whole line)."""
    start = before.find(_EVENT_OBJECT)
    end = before.find(b'},"', start) if start >= 0 else -1
    if end < 0:
        return None
    try:
        found = orjson.loads(before[start + len(_EVENT_OBJECT) - 1 : end + 1])
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def _encoded_values(batch: list[Event]) -> list[bytes]:
    """The batch's docs as JSON (C), as far as the encoder takes them in order; the rest
    goes through KafkaSink._encode alone (its errors counted there, as the jsonl sink's)."""
    if _NATIVE_LINES is None or not batch:
        return []
    lines, upto = _NATIVE_LINES(
        orjson.dumps, orjson.OPT_APPEND_NEWLINE, batch, 0, sys.maxsize, sys.maxsize
    )
    # JSON text holds no raw newline (a string's is escaped): one line per event.
    return lines.split(b"\n")[:upto]


def _doc_field_of_line(value: bytes, name: str) -> Mapping[str, Any]:
    """A top-level object of a doc's JSON (a split doc whose text did not show it plainly)."""
    found = orjson.loads(value).get(name)
    return found if isinstance(found, dict) else {}


def _doc_field(doc: Mapping[str, Any], outer: str, inner: str) -> Any:
    """ECS field outer.inner from a nested doc ({"host": {"name": …}}), else from a flat
    "host.name" key. Per event and hot: isinstance(dict) first, the ABC check is slow."""
    part = doc.get(outer)
    if isinstance(part, dict | Mapping):
        value = part.get(inner)
        if value is not None:
            return value
    return doc.get(f"{outer}.{inner}")


def _as_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _utf8(text: str) -> bytes:
    # Docs are JSON-ready text already; backslashreplace only guards against lone surrogates.
    return text.encode("utf-8", "backslashreplace")


class KafkaSink:
    """Events to a Kafka topic; see the module docstring for the delivery guarantees."""

    def __init__(self, options: KafkaOptions, name: str = "kafka") -> None:
        self.name = name
        self.stats = SinkStats()
        self.options = options
        self._closing = False
        self._closed = False
        # Set by stop_by() from another thread: every wait ends there (time.monotonic()).
        self._stop_at: float | None = None
        self._gave_up = False
        # Why events were discarded, summing to stats.discarded_events (the fan-out's summary).
        self.discarded_by_reason: dict[str, int] = {}
        self._librdkafka_log = LibrdkafkaLog(logging.getLogger(f"{__name__}.librdkafka"))
        self._fatal: KafkaError | None = None
        self._drops: list[DropSpan] = []
        self._drop_run_open = False
        self._stalled = False
        self._log_counts: dict[str, int] = {}
        self._key_cache: dict[str, bytes] = {}
        # Accepted by produce(), and of those reported failed: with what librdkafka still
        # holds, they give the events sent (_serve).
        self._produced = 0
        self._failed = 0
        self._headers_cache: dict[tuple[str, str], Headers] = {}
        self._producer = self._start_producer()
        log.info(
            "kafka sink %s: brokers=%s topic=%s key=%s compression=%s acks=%s",
            name,
            ",".join(options.brokers),
            options.topic,
            options.key,
            options.compression,
            options.acks,
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any], name: str = "kafka") -> KafkaSink:
        """Build from a dict of TOML options; SinkError names a bad key or an unreachable broker."""
        return cls(KafkaOptions.from_mapping(options, f"sinks[{name}]"), name=name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KafkaSink:
        """Build from a registry config table (see :func:`options_from_config`)."""
        name, options = options_from_config(config)
        return cls(options, name=name)

    def __repr__(self) -> str:
        return f"KafkaSink(name={self.name!r}, options={self.options!r})"

    # -- start-up -------------------------------------------------------------------------

    def _producer_config(self) -> dict[str, Any]:
        opts = self.options
        if opts.acks not in ("all", "-1"):
            log.warning(
                "kafka sink %s: acks=%s turns off idempotence; retries may duplicate or "
                "reorder events",
                self.name,
                opts.acks,
            )
        return {
            **producer_settings(opts),
            "on_delivery": self._on_delivery,
            "error_cb": self._on_client_error,
            "logger": self._librdkafka_log,
        }

    def _start_producer(self) -> Producer:
        """Create the producer and prove the brokers answer and know the topic."""
        opts = self.options
        try:
            producer = Producer(self._producer_config())
        except (KafkaException, ValueError, TypeError) as exc:
            raise SinkError(
                f"sinks[{self.name}].librdkafka: bad producer settings: {self._scrub(exc)}"
            ) from None
        try:
            metadata = producer.list_topics(
                topic=opts.topic, timeout=opts.connect_timeout_ms / 1000
            )
        except KafkaException as exc:
            raise SinkError(
                f"kafka sink {self.name}: no answer from brokers {','.join(opts.brokers)} "
                f"within {opts.connect_timeout_ms} ms: {self._scrub(exc)}"
            ) from None
        topic = metadata.topics.get(opts.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error else "no partitions"
            raise SinkError(f"kafka sink {self.name}: topic {opts.topic!r} is not usable: {reason}")
        return producer

    def _scrub(self, exc: BaseException) -> str:
        """An exception's text with any credential value blanked out."""
        return _scrub_text(exc, self.options)

    # -- the Sink protocol ------------------------------------------------------------------

    def write_batch(self, events: Sequence[Event]) -> None:
        """Queue these events for delivery, in order; blocks while the local queue is full
        (when_full = "block") or drops and counts the newest events (when_full = "drop_newest")."""
        if self._closed:
            raise SinkError(f"kafka sink {self.name}: used after close()")
        self.stats.received_events += len(events)
        batch = events if type(events) is list else list(events)
        values = _encoded_values(batch)
        for index, event in enumerate(batch):
            if self._fatal is not None:
                self._count_discard("fatal", len(batch) - index)
                break
            message = self._encode(event, values[index] if index < len(values) else None)
            if message is not None:
                self._produce(event, *message)
        self._serve(0)
        self._raise_if_fatal()

    def flush(self) -> None:
        """Wait up to flush_timeout_ms for every queued event's delivery report; events still
        outstanding stay queued (they are not lost) and the timeout is counted and logged."""
        if self._closed:
            return
        self._flush_producer()
        self._raise_if_fatal()

    def undelivered(self) -> int:
        """Events handed to librdkafka whose delivery is not confirmed yet.

        The fan-out does not call a batch durable (and the receiver keeps it for a resend)
        while this is not 0: a SIGKILL would lose what librdkafka still queues.
        """
        return 0 if self._closed else len(self._producer)

    def stop_by(self, deadline: float) -> None:
        """Give up waiting at ``deadline`` (time.monotonic()): a flush returns then, an event
        that finds the queue full then is discarded (shutdown_timeout), close() purges.
        Safe from another thread; an earlier deadline wins."""
        stop_at = self._stop_at
        if stop_at is None or deadline < stop_at:
            self._stop_at = deadline

    def _stop_due(self) -> bool:
        stop_at = self._stop_at
        return stop_at is not None and time.monotonic() >= stop_at

    def _flush_producer(self) -> None:
        # The shutdown deadline bounds the flush too, also one set while it waits.
        remaining = self._serve(self.options.flush_timeout_ms / 1000, flush=True, stoppable=True)
        if remaining and not self._stop_due():
            self.stats.error("flush_timeout")
            log.warning(
                "kafka sink %s: %d messages still undelivered after %d ms; still retrying",
                self.name,
                remaining,
                self.options.flush_timeout_ms,
            )

    def close(self) -> None:
        """Flush (until flush_timeout_ms or the stop_by() deadline), then give up on what is
        left: it is counted as discarded (undelivered_at_exit) and logged, never dropped
        silently."""
        if self._closed:
            return
        self._flush_producer()
        self._closing = True
        if len(self._producer):
            # Purged messages come back as delivery reports; _on_delivery counts them.
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._serve(PURGE_WAIT_S, flush=True)
            leftover = len(self._producer)
            if leftover:
                self._count_discard("undelivered_at_exit", leftover)
        self._closed = True
        undelivered = self.discarded_by_reason.get("undelivered_at_exit", 0)
        if undelivered:
            log.error("kafka sink %s: %d events undelivered at exit", self.name, undelivered)
        given_up = self.discarded_by_reason.get("shutdown_timeout", 0)
        if given_up:
            log.error(
                "kafka sink %s: %d events discarded: no room in the local queue before the "
                "shutdown deadline",
                self.name,
                given_up,
            )

    def take_drops(self) -> list[DropSpan]:
        """The runs of events dropped because the queue was full since the last call, as
        (count, first_key, last_key), for the fan-out to turn into marker events."""
        drops, self._drops = self._drops, []
        self._drop_run_open = False
        return drops

    # -- per event --------------------------------------------------------------------------

    def _encode(
        self, event: Event, value: bytes | None = None
    ) -> tuple[bytes, bytes, Headers] | None:
        """(value, key, headers) for one event, or None (counted) if it cannot be sent.
        ``value``: the doc's JSON already made for the batch (_encoded_values)."""
        doc = event.get("doc") if isinstance(event, dict | Mapping) else None
        if not isinstance(doc, dict | Mapping):
            self._discard("bad_event", "event without a doc mapping")
            return None
        # A split doc (auditstream/doc_text.py): its text, around the head's ``process``.
        text = event.get(DOC_TEXT) if isinstance(doc, dict) else None
        if value is None:
            try:
                if text is not None and isinstance(doc, dict):
                    value = doc_line(doc, text)[:-1]
                else:
                    value = orjson.dumps(doc)
            except (orjson.JSONEncodeError, KeyError, TypeError, ValueError) as exc:
                self._discard("serialize", str(exc))
                return None
        if text is not None:
            # The head holds process and container only; host.name is the records' node's
            # (the assembler wrote it from the event key's node), event is in the text.
            host = self._host_of(event)
            found = text_event(text[0])
            if found is None:
                found = _doc_field_of_line(value, "event")
            action = _as_text(found.get("action")) or _as_text(found.get("kind"))
        else:
            # Live docs name this host already (the receiver gave their records its node); a
            # doc without host.name (a replayed log without node=: an unknown host) gets the
            # empty key, which the "consistent" partitioner keeps on one partition, and no
            # host header: this host is not named for another's events.
            host = _as_text(_doc_field(doc, "host", "name")) or ""
            action = _as_text(_doc_field(doc, "event", "action")) or _as_text(
                _doc_field(doc, "event", "kind")
            )
        key = host if self.options.key == "host" else self._partition_key(doc, host)
        return value, self._key_bytes(key), self._headers(host, action or "event")

    @staticmethod
    def _host_of(event: Event) -> str:
        """host.name of a split doc: its event key's node as the assembler spells it
        (``host_name`` caches the spelling); "" for a log without node=."""
        key = event.get("key")
        node = key[0] if isinstance(key, list | tuple) and key else ""
        return host_name(node) if isinstance(node, str) else ""

    def _key_bytes(self, key: str) -> bytes:
        """Encoded message key, cached: a host has few distinct keys and this runs per event."""
        encoded = self._key_cache.get(key)
        if encoded is None:
            if len(self._key_cache) >= CACHE_MAX_ENTRIES:
                self._key_cache.clear()
            encoded = self._key_cache[key] = _utf8(key)
        return encoded

    def _headers(self, host: str, kind: str) -> Headers:
        """Message headers, cached per (host, kind); produce() only reads them. No ``host``
        header for a doc without host.name ("")."""
        headers = self._headers_cache.get((host, kind))
        if headers is None:
            if len(self._headers_cache) >= CACHE_MAX_ENTRIES:
                self._headers_cache.clear()
            headers = [("schema_version", SCHEMA_VERSION)]
            if host:
                headers.append(("host", _utf8(host)))
            headers.append(("event_kind", _utf8(kind)))
            self._headers_cache[(host, kind)] = headers
        return headers

    def _partition_key(self, doc: Mapping[str, Any], host: str) -> str:
        """The message key: one host's / container's / process tree's events share a
        partition, so Kafka keeps them in order."""
        mode = self.options.key
        if mode == "container":
            return _as_text(_doc_field(doc, "container", "id")) or host
        if mode == "process_tree_root":
            ancestry = _doc_field(doc, "process", "ancestry")
            if isinstance(ancestry, list):
                # Ancestry runs from the parent upwards; the last known entity is the root.
                for ancestor in reversed(ancestry):
                    if isinstance(ancestor, Mapping) and (
                        root := _as_text(ancestor.get("entity_id"))
                    ):
                        return root
        return host

    def _produce(self, event: Event, value: bytes, key: bytes, headers: Headers) -> None:
        while True:
            try:
                self._producer.produce(self.options.topic, value=value, key=key, headers=headers)
            except BufferError:
                if self._fatal is not None:
                    self._discard("fatal", "producer failed")
                    return
                if self.options.when_full == "drop_newest":
                    self._record_drop(event)
                    return
                if self._stop_due():  # block waits while running, not past the shutdown
                    self._give_up()
                    return
                self._wait_for_space()
                continue
            except KafkaException as exc:
                error = exc.args[0]
                if not isinstance(error, KafkaError):
                    self._discard("produce", str(exc))
                elif error.fatal() or error.code() == KafkaError._FATAL:
                    # produce() reports an earlier fatal error as the local code _FATAL.
                    self._serve(0)  # surfaces the original fatal error, with its cause
                    self._fatal = self._fatal or error
                    self._discard("fatal", error.str())
                else:
                    self._discard(error.name(), error.str())
                return
            self._produced += 1
            self._drop_run_open = False
            if self._stalled:
                self._stalled = False
                log.info("kafka sink %s: queue has room again", self.name)
            return

    def _wait_for_space(self) -> None:
        """Backpressure: serve delivery reports until librdkafka's queue has room."""
        if not self._stalled:
            self._stalled = True
            log.warning(
                "kafka sink %s: local queue full (%d events); blocking until brokers catch up",
                self.name,
                self.options.queue_max_events,
            )
        self._serve(0.05)

    def _give_up(self) -> None:
        """An event that found no room after the stop_by() deadline: discarded, counted."""
        self._count_discard("shutdown_timeout", 1)
        if not self._gave_up:
            self._gave_up = True
            log.error(
                "kafka sink %s: shutdown deadline reached with the local queue full; "
                "discarding what does not fit (shutdown_timeout)",
                self.name,
            )

    def _serve(self, timeout_s: float, flush: bool = False, stoppable: bool = False) -> int:
        """Serve delivery reports for up to timeout_s (until nothing is outstanding when
        `flush`; until the stop_by() deadline if that comes first and `stoppable`); a fatal
        producer error raised from poll() is remembered. Returns the messages still
        outstanding.

        Producer.flush() is not used: when a fatal error surfaces inside it, confluent-kafka
        keeps calling delivery callbacks with the exception set and ends in SystemError."""
        deadline = time.monotonic() + timeout_s
        while True:
            stop_at = self._stop_at
            if stoppable and stop_at is not None and stop_at < deadline:
                deadline = stop_at
            try:
                self._producer.poll(max(0.0, min(deadline - time.monotonic(), POLL_SLICE_S)))
            except KafkaException as exc:
                error = exc.args[0]
                if not isinstance(error, KafkaError):
                    raise
                self._note_client_error(error)
            remaining = len(self._producer)
            self.stats.sent_events = self._produced - self._failed - remaining
            if not flush or not remaining or time.monotonic() >= deadline:
                return remaining

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            # Events are already counted; the fan-out only logs a SinkWriteError.
            raise SinkWriteError(f"kafka sink {self.name}: producer failed: {self._fatal.str()}")

    def _record_drop(self, event: Event) -> None:
        key = list(event.get("key") or [])
        self._count_discard("queue_full", 1)
        if self._drop_run_open and self._drops:
            count, first, _ = self._drops[-1]
            self._drops[-1] = (count + 1, first, key)
        else:
            self._drops.append((1, key, key))
            self._drop_run_open = True
        self._log_sparsely("queue_full", "local queue full; dropping newest events")

    def _discard(self, error_type: str, detail: str) -> None:
        self._count_discard(error_type, 1)
        self._log_sparsely(error_type, f"event discarded: {detail}")

    def _count_discard(self, reason: str, count: int) -> None:
        """Count events discarded, as an error of that type and by reason."""
        self.stats.discarded_events += count
        self.stats.error(reason, count)
        self.discarded_by_reason[reason] = self.discarded_by_reason.get(reason, 0) + count

    def _log_sparsely(self, error_type: str, message: str) -> None:
        """Log the 1st, 2nd, 4th, 8th… occurrence of each error type, with its count."""
        seen = self._log_counts.get(error_type, 0) + 1
        self._log_counts[error_type] = seen
        if seen & (seen - 1) == 0:
            log.warning("kafka sink %s: %s (%s, %d so far)", self.name, message, error_type, seen)

    # -- librdkafka callbacks (run inside poll()/flush() in the caller's thread) -----------

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return  # delivered: counted from the queue's length (_serve), if reported at all
        self._failed += 1
        if self._closing and err.code() in PURGE_ERRORS:
            self._count_discard("undelivered_at_exit", 1)
        else:
            self._discard(err.name(), f"delivery failed: {err.str()}")

    def _on_client_error(self, err: KafkaError) -> None:
        self._note_client_error(err)

    def _note_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            if self._fatal is not None:
                return
            self._fatal = err
            log.error("kafka sink %s: fatal producer error: %s", self.name, err.str())
            return
        # Connection trouble is retried by librdkafka; count it so an outage is visible.
        self.stats.error(err.name())
        self._log_sparsely(err.name(), f"client error: {err.str()}")
