"""check-config validates kafka sinks as the tree keeper builds them, offline.

Real `python -m auditstream check-config` (and `replay -c`) subprocesses on TOML files: a bad
option is refused with the file, the sink and the key named; a good one passes without a
single connection to its brokers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

REPO = Path(__file__).resolve().parents[1]
CORPUS_LOG = REPO / "tests" / "corpus" / "go-libaudit" / "testdata" / "normal.log"


def kafka_config(path: Path, brokers: str, extra: str) -> Path:
    """A config file with one kafka sink `audit-kafka` plus the TOML lines `extra`."""
    topic = "" if extra.startswith("topic") else 'topic = "audit"\n'
    path.write_text(
        f'[[sinks]]\ntype = "kafka"\nname = "audit-kafka"\nbrokers = "{brokers}"\n{topic}{extra}\n'
    )
    path.chmod(0o600)
    return path


def auditstream(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditstream", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("linger_ms = -1", "sinks[audit-kafka].linger_ms"),
        ('compression = "brotli"', "sinks[audit-kafka].compression"),
        ('flush_timeout_ms = "abc"', "sinks[audit-kafka].flush_timeout_ms"),
        ('key = "user"', "sinks[audit-kafka].key"),
        ("max_bytes = 1000", "sinks[audit-kafka]: unknown key 'max_bytes'"),
        ('topic = "bad topic"', "sinks[audit-kafka].topic"),
        ('librdkafka = {"bogus.setting" = "0"}', '"bogus.setting"'),
        ('librdkafka = {"linger.ms" = 1}', "'linger.ms' is controlled by the option 'linger_ms'"),
        ('librdkafka = {"max.in.flight" = 10}', "enable.idempotence"),
        ('librdkafka = {"security.protocol" = "bogus"}', "security.protocol"),
    ],
)
def test_check_config_refuses_a_bad_kafka_option_naming_file_sink_and_key(
    tmp_path: Path, extra: str, named: str
) -> None:
    """Each bad kafka option fails check-config with the file, the sink and the key (or setting) named."""
    config = kafka_config(tmp_path / "k.toml", "127.0.0.1:1", extra)
    result = auditstream("check-config", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(config) in result.stderr and "sinks[audit-kafka]" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_refuses_a_bad_kafka_option_before_starting(tmp_path: Path) -> None:
    """replay -c with a bad kafka option stops before any stage starts, the file and sink named."""
    config = kafka_config(tmp_path / "k.toml", "127.0.0.1:1", "linger_ms = -1")
    result = auditstream("replay", "-c", str(config), str(CORPUS_LOG))
    assert result.returncode == 2, result.stderr
    assert f"{config}: sinks[audit-kafka].linger_ms: expected an integer >= 0, got -1" in (
        result.stderr
    )
    assert "stage pids" not in result.stderr and "cannot start sinks" not in result.stderr


def test_check_config_passes_a_good_kafka_sink_without_contacting_its_brokers(
    tmp_path: Path,
) -> None:
    """A valid kafka sink (librdkafka settings too) passes check-config; its broker sees no connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        host, port = listener.getsockname()
        extra = (
            'compression = "lz4"\nkey = "process_tree_root"\nwhen_full = "drop_newest"\n'
            'librdkafka = {"socket.keepalive.enable" = true, "sasl.password" = "hunter2"}'
        )
        config = kafka_config(tmp_path / "k.toml", f"{host}:{port}", extra)
        result = auditstream("check-config", "-c", str(config))
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result.returncode == 0, result.stderr
    assert "OK (1 sink" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
