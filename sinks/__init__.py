"""Sinks: where enriched events go. This module is the registry of sink types.

``parse_sink_arg("jsonl:events.jsonl")`` turns a command-line argument into a
:class:`SinkConfig`; ``sink_configs_from_tables(cfg.sinks)`` does the same for the
``[[sinks]]`` tables of the config file; ``build_sink(cfg)`` makes the sink through
``SINK_FACTORIES`` (type name -> factory). ``kafka`` is imported only when a kafka
sink is configured, so a missing confluent-kafka only matters then.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from sinks.base import Event, Sink, SinkError, SinkStats
from sinks.config import (
    SinkConfig,
    file_output_config,
    sink_config_from_table,
    sink_configs_from_tables,
)

SinkFactory = Callable[[SinkConfig], Sink]

# Sink types that write an audit event from its doc's text and head (auditstream/doc_text.py):
# jsonl and kafka splice the text, file writes the raw records.
_DOC_TEXT_TYPES = frozenset({"jsonl", "kafka", "file"})
# Those that also take ``process.ancestry`` entries as JSON text (orjson.Fragment): kafka
# reads an entry's entity_id for its process_tree_root key.
_ANCESTRY_TEXT_TYPES = frozenset({"jsonl", "file"})


def sinks_take_doc_text(tables: object) -> bool:
    """Every sink of ``[[sinks]]`` writes from a doc's text and head: no need for whole docs."""
    return all(sink.type in _DOC_TEXT_TYPES for sink in sink_configs_from_tables(tables))


def sinks_take_ancestry_text(tables: object) -> bool:
    """Every sink of ``[[sinks]]`` writes ``process.ancestry`` entries from their JSON text."""
    return all(sink.type in _ANCESTRY_TEXT_TYPES for sink in sink_configs_from_tables(tables))


def sinks_write_raw(tables: object) -> bool:
    """Some sink of ``[[sinks]]`` writes events' raw records (``file``): else events travel
    with their record count in place of the records (docs/internals.md)."""
    return any(sink.type == "file" for sink in sink_configs_from_tables(tables))


# The option an argument's TARGET sets, per type (``jsonl:PATH`` sets ``path``).
_TARGET_OPTION = {"jsonl": "path", "file": "path", "kafka": "target"}


def _build_jsonl(cfg: SinkConfig) -> Sink:
    from sinks.jsonl import JsonlSink

    return JsonlSink.from_config(cfg)


def _build_file(cfg: SinkConfig) -> Sink:
    from sinks.rawfile import RawFileSink

    return RawFileSink.from_config(cfg)


def _kafka_module(cfg: SinkConfig) -> ModuleType:
    """sinks.kafka, imported on first use; SinkError if confluent-kafka is missing."""
    try:
        from sinks import kafka
    except ImportError as err:
        raise SinkError(
            f"{cfg.where}: the kafka sink needs confluent-kafka "
            f"(pip install 'auditstream[kafka]'): {err}"
        ) from err
    return kafka


def _build_kafka(cfg: SinkConfig) -> Sink:
    kafka = _kafka_module(cfg)
    sink: Sink = kafka.KafkaSink.from_config(kafka.sink_table(cfg))
    return sink


def check_sink(cfg: SinkConfig) -> None:
    """Validate a sink as its factory will build it, without opening a file or contacting
    a broker (check-config); SinkError names the sink and key."""
    if cfg.type in ("jsonl", "file"):
        file_output_config(cfg)
    elif cfg.type == "kafka":
        _kafka_module(cfg).check_sink_config(cfg)
    else:
        raise SinkError(f"{cfg.where}.type: unknown sink type {cfg.type!r}")


SINK_FACTORIES: dict[str, SinkFactory] = {
    "jsonl": _build_jsonl,
    "file": _build_file,
    "kafka": _build_kafka,
}


def parse_sink_arg(arg: str) -> SinkConfig:
    """``TYPE:TARGET`` -> SinkConfig named by the whole argument (``-`` as PATH is stdout)."""
    sink_type, sep, target = arg.partition(":")
    if not sep or not target:
        raise SinkError(f"sink {arg!r}: expected TYPE:TARGET, e.g. jsonl:events.jsonl or file:-")
    if sink_type not in SINK_FACTORIES:
        known = ", ".join(sorted(SINK_FACTORIES))
        raise SinkError(f"sink {arg!r}: unknown type {sink_type!r} (known: {known})")
    option = _TARGET_OPTION.get(sink_type, "target")
    return sink_config_from_table({"type": sink_type, "name": arg, option: target})


def build_sink(cfg: SinkConfig) -> Sink:
    """Make the sink ``cfg`` describes; SinkError names the problem."""
    factory = SINK_FACTORIES.get(cfg.type)
    if factory is None:
        known = ", ".join(sorted(SINK_FACTORIES))
        raise SinkError(f"{cfg.where}.type: unknown sink type {cfg.type!r} (known: {known})")
    return factory(cfg)


__all__ = [
    "SINK_FACTORIES",
    "Event",
    "Sink",
    "SinkConfig",
    "SinkError",
    "SinkFactory",
    "SinkStats",
    "build_sink",
    "check_sink",
    "parse_sink_arg",
    "sink_configs_from_tables",
    "sinks_take_ancestry_text",
    "sinks_take_doc_text",
]
