"""Batch sizes follow the source where the config leaves them 0 (auditstream.config.batching)."""

from __future__ import annotations

import pytest

from auditstream import config
from auditstream.config import FILE_BATCHING, LIVE_BATCHING, Config, ConfigError, batching
from auditstream.redelivery import buffered_records


@pytest.mark.parametrize("source", ["netlink", "multicast", "stdin", "unix:/run/x.sock"])
def test_live_sources_take_large_batches(source: str) -> None:
    """Every source that waits for the kernel or auditd gets 2048-record batches, 64 kept."""
    cfg = Config()
    cfg.receiver.source = source
    assert batching(cfg.receiver) == LIVE_BATCHING == (2048, 64)


def test_a_file_takes_small_batches_unless_followed() -> None:
    """A file read through gets 512-record batches; a followed one waits like a live source."""
    cfg = Config()
    cfg.receiver.source = "file"
    assert batching(cfg.receiver) == FILE_BATCHING == (512, 256)
    cfg.receiver.follow = True
    assert batching(cfg.receiver) == LIVE_BATCHING


def test_both_keep_the_same_records_for_redelivery() -> None:
    """Live and file defaults protect the same number of records, so dedupe's bound holds."""
    live, file = Config(), Config()
    file.receiver.source = "file"
    assert buffered_records(live) == buffered_records(file) == 131_072


def test_values_set_in_the_config_win_each_on_its_own() -> None:
    """A value the user sets is used as it is; the other one still follows the source."""
    cfg = config.from_dict({"receiver": {"batch_max_records": 100}})
    assert batching(cfg.receiver) == (100, LIVE_BATCHING.replay_buffer_batches)
    cfg = config.from_dict({"receiver": {"source": "file", "replay_buffer_batches": 7}})
    assert batching(cfg.receiver) == (FILE_BATCHING.batch_max_records, 7)
    live = config.from_dict({"receiver": {"replay_buffer_batches": 7}})
    assert buffered_records(live) == 7 * LIVE_BATCHING.batch_max_records


def test_small_batches_keep_at_least_the_minimum_records() -> None:
    """With tiny batches the buffer keeps more of them: at least 2,048 records in all."""
    cfg = config.from_dict({"receiver": {"batch_max_records": 1, "replay_buffer_batches": 4}})
    assert batching(cfg.receiver) == (1, config.MIN_REPLAY_BUFFER_RECORDS)
    cfg = config.from_dict({"receiver": {"batch_max_records": 7, "replay_buffer_batches": 4}})
    assert batching(cfg.receiver) == (7, 293)  # ceil(2048 / 7)
    cfg = config.from_dict({"receiver": {"batch_max_records": 4096, "replay_buffer_batches": 4}})
    assert batching(cfg.receiver) == (4096, 4)


def test_a_file_sources_resend_bound_covers_its_growth() -> None:
    """A file source's buffer may grow to the default's records: dedupe must cover that."""
    cfg = config.from_dict({"receiver": {"source": "file", "replay_buffer_batches": 7}})
    assert buffered_records(cfg) == config.GROWN_REPLAY_BUFFER_RECORDS == 131_072
    cfg.assembler.instances = 3
    assert buffered_records(cfg) == 3 * 131_072


@pytest.mark.parametrize("key", ["batch_max_records", "replay_buffer_batches"])
def test_a_negative_value_names_the_key(key: str) -> None:
    """A negative batch setting is refused with the key's name; 0 means by source."""
    with pytest.raises(ConfigError, match=rf"\[receiver\]\.{key} must be 0 \(by source\)"):
        config.from_dict({"receiver": {key: -1}})
    assert getattr(config.from_dict({"receiver": {key: 0}}).receiver, key) == 0
