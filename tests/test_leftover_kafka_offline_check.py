"""The offline check of a Kafka sink (``check-config``, and every run before a stage starts)
runs no command and touches no network: no kinit for GSSAPI, no OIDC token request
(sinks/kafka.py ``offline_check_settings``; docs/design.md, ``check-config``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

from sinks.base import SinkError
from sinks.config import SinkConfig
from sinks.kafka import KafkaOptions, check_sink_config, offline_check_settings, producer_settings


def kafka_sink(librdkafka: dict[str, Any]) -> SinkConfig:
    """A kafka sink of an unreachable broker with these librdkafka settings."""
    return SinkConfig(
        type="kafka",
        name="siem",
        options={"brokers": "127.0.0.1:9", "topic": "audit", "librdkafka": librdkafka},
    )


@pytest.fixture()
def token_endpoint() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP endpoint on localhost that records what reaches it: (its URL, the requests)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    requests: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                requests.append(conn.recv(512))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/token", requests
    done.set()
    thread.join()
    server.close()


def oidc_settings(url: str) -> dict[str, Any]:
    """SASL/OAUTHBEARER with OIDC: librdkafka fetches a token from ``url`` on its own."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "auditstream",
        "sasl.oauthbearer.client.secret": "hunter2",
        "sasl.oauthbearer.token.endpoint.url": url,
    }


def test_oidc_check_requests_no_token(token_endpoint: tuple[str, list[bytes]]) -> None:
    """Five checks of an OIDC sink send nothing to its token endpoint (each once did: the secret went out)."""
    url, requests = token_endpoint
    for _ in range(5):
        check_sink_config(kafka_sink(oidc_settings(url)))
    time.sleep(1.0)  # librdkafka's background thread would have posted by now
    assert requests == []


def test_oidc_check_still_refuses_missing_settings() -> None:
    """An OIDC sink without its client id is still refused, naming the setting."""
    settings = oidc_settings("http://127.0.0.1:1/token")
    del settings["sasl.oauthbearer.client.id"]
    with pytest.raises(SinkError, match=r"sasl\.oauthbearer\.client\.id"):
        check_sink_config(kafka_sink(settings))


# -- GSSAPI: the confluent-kafka wheel has no Kerberos; a distro's librdkafka (python3-confluent-kafka's) has


def system_librdkafka() -> ctypes.CDLL | None:
    """The host's librdkafka (kcat's), which may have GSSAPI (cyrus-sasl), or None."""
    name = ctypes.util.find_library("rdkafka")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
    ]  # fmt: skip
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def create_and_destroy(lib: ctypes.CDLL, settings: dict[str, Any]) -> None:
    """A producer made from ``settings`` with the C API, destroyed at once (as the check's)."""
    conf = lib.rd_kafka_conf_new()
    error = ctypes.create_string_buffer(512)
    for name, value in settings.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert lib.rd_kafka_conf_set(conf, name.encode(), text.encode(), error, 512) == 0, (
            error.value
        )
    client = lib.rd_kafka_new(0, conf, error, 512)  # 0: RD_KAFKA_PRODUCER
    if not client:
        pytest.skip(f"this host's librdkafka cannot make a GSSAPI client: {error.value.decode()}")
    lib.rd_kafka_destroy(client)


def gssapi_settings(marker: Path) -> dict[str, Any]:
    """The producer settings of a SASL/GSSAPI sink whose kinit command leaves ``marker``
    (without brokers: this test connects nowhere either)."""
    opts = KafkaOptions.from_mapping(
        {
            "brokers": "127.0.0.1:9",
            "topic": "audit",
            "librdkafka": {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": "GSSAPI",
                "sasl.kerberos.kinit.cmd": f"touch {marker}",
            },
        }
    )
    settings = producer_settings(opts)
    del settings["bootstrap.servers"]
    return settings


def test_gssapi_check_runs_no_kinit(tmp_path: Path) -> None:
    """With a GSSAPI librdkafka a producer runs kinit at creation; the check's settings do not."""
    lib = system_librdkafka()
    if lib is None:
        pytest.skip("no librdkafka on this host (apt-get install librdkafka1)")
    real, checked = tmp_path / "kinit-real", tmp_path / "kinit-checked"
    create_and_destroy(lib, gssapi_settings(real))
    create_and_destroy(lib, offline_check_settings(gssapi_settings(checked)))
    time.sleep(0.5)
    assert real.exists()  # librdkafka does run it: the test can tell
    assert not checked.exists()
