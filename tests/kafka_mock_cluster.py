"""librdkafka's mock Kafka cluster, run in a child process, for tests that need a real broker.

The confluent-kafka wheel bundles librdkafka, which carries a complete in-process Kafka
cluster (the one librdkafka's own test suite uses). This module loads that shared library
with ctypes in a small child Python process, so the brokers live in their own process and
the client under test talks the real Kafka protocol over TCP. The parent steers the child
over stdin with one command per line and reads one answer line per command:

    down N | up N                                   -> "ok" | "error ..."
    topic NAME PARTITIONS REPLICATION               -> "ok" | "error ..."
    topic_error NAME ERRCODE                        -> "ok"  (metadata reports ERRCODE)
    push_errors APIKEY ERRCODE [ERRCODE ...]        -> "ok" | "error ..."
    quit                                            -> child exits

On start the child prints "bootstrap HOST:PORT,..." (or "error ..." and exits). The child
also exits when its stdin closes, so a crashed test leaves no broker process behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RD_KAFKA_PRODUCER = 0
START_TIMEOUT_S = 20.0


class MockClusterError(RuntimeError):
    """The mock cluster could not be started or refused a command."""


def bundled_librdkafka() -> Path | None:
    """The librdkafka shared library shipped inside the confluent-kafka wheel, if any."""
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or spec.origin is None:
        return None
    package_dir = Path(spec.origin).parent
    # auditwheel puts vendored libraries in "<package>.libs" next to the package directory.
    for libs_dir in (package_dir.parent / "confluent_kafka.libs", package_dir / ".libs"):
        found = sorted(libs_dir.glob("librdkafka*.so*"))
        if found:
            return found[0]
    return None


def _declare_mock_api(lib: ctypes.CDLL) -> None:
    """Give ctypes the C signatures of the few mock-cluster functions the child calls."""
    vp, cp, i32, i16 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int16
    lib.rd_kafka_conf_new.restype = vp
    lib.rd_kafka_conf_set.argtypes = [vp, cp, cp, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_conf_set.restype = ctypes.c_int
    lib.rd_kafka_new.argtypes = [ctypes.c_int, vp, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = vp
    lib.rd_kafka_mock_cluster_new.argtypes = [vp, ctypes.c_int]
    lib.rd_kafka_mock_cluster_new.restype = vp
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [vp]
    lib.rd_kafka_mock_cluster_bootstraps.restype = cp
    lib.rd_kafka_mock_cluster_destroy.argtypes = [vp]
    lib.rd_kafka_destroy.argtypes = [vp]
    for name in ("rd_kafka_mock_broker_set_down", "rd_kafka_mock_broker_set_up"):
        getattr(lib, name).argtypes = [vp, i32]
        getattr(lib, name).restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [vp, cp, ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_set_error.argtypes = [vp, cp, ctypes.c_int]
    lib.rd_kafka_mock_push_request_errors_array.argtypes = [
        vp,
        i16,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_int),
    ]
    lib.rd_kafka_err2name.argtypes = [ctypes.c_int]
    lib.rd_kafka_err2name.restype = cp


def _answer(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _run_command(lib: ctypes.CDLL, cluster: int, words: list[str]) -> str:
    """Carry out one command line in the child; return the answer line."""
    verb, args = words[0], words[1:]
    if verb in ("down", "up") and len(args) == 1:
        fn = (
            lib.rd_kafka_mock_broker_set_down if verb == "down" else lib.rd_kafka_mock_broker_set_up
        )
        err = fn(cluster, int(args[0]))
    elif verb == "topic" and len(args) == 3:
        err = lib.rd_kafka_mock_topic_create(cluster, args[0].encode(), int(args[1]), int(args[2]))
    elif verb == "topic_error" and len(args) == 2:
        lib.rd_kafka_mock_topic_set_error(cluster, args[0].encode(), int(args[1]))
        err = 0
    elif verb == "push_errors" and len(args) >= 2:
        codes = (ctypes.c_int * (len(args) - 1))(*(int(a) for a in args[1:]))
        lib.rd_kafka_mock_push_request_errors_array(cluster, int(args[0]), len(args) - 1, codes)
        err = 0
    else:
        return f"error unknown command {' '.join(words)!r}"
    if err:
        return f"error {lib.rd_kafka_err2name(err).decode()}"
    return "ok"


def serve(broker_count: int) -> int:
    """Child process main: start the cluster, print its bootstrap, obey stdin until quit/EOF."""
    path = bundled_librdkafka()
    if path is None:
        _answer("error confluent-kafka's bundled librdkafka not found")
        return 1
    lib = ctypes.CDLL(str(path))
    _declare_mock_api(lib)
    errstr = ctypes.create_string_buffer(512)
    # The mock cluster needs a client handle to hang its threads on; a bare producer will do.
    # Notices (level 5) are muted: this handle has no bootstrap servers on purpose.
    conf = lib.rd_kafka_conf_new()
    lib.rd_kafka_conf_set(conf, b"log_level", b"4", errstr, len(errstr))
    handle = lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
    if not handle:
        _answer(f"error rd_kafka_new: {errstr.value.decode(errors='replace')}")
        return 1
    cluster = lib.rd_kafka_mock_cluster_new(handle, broker_count)
    if not cluster:
        _answer("error rd_kafka_mock_cluster_new failed")
        return 1
    _answer("bootstrap " + lib.rd_kafka_mock_cluster_bootstraps(cluster).decode())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            _answer(_run_command(lib, cluster, words))
        except ValueError as exc:
            _answer(f"error {exc}")
    lib.rd_kafka_mock_cluster_destroy(cluster)
    lib.rd_kafka_destroy(handle)
    return 0


class MockKafkaCluster:
    """Parent-side handle on a mock cluster child process."""

    def __init__(self, broker_count: int = 3) -> None:
        self.broker_count = broker_count
        self._child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(broker_count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._read_answer()
        if not first.startswith("bootstrap "):
            self.stop()
            raise MockClusterError(f"mock cluster did not start: {first}")
        self.bootstrap = first.removeprefix("bootstrap ")

    def _read_answer(self) -> str:
        assert self._child.stdout is not None
        line = self._child.stdout.readline()
        if not line:
            raise MockClusterError(f"mock cluster exited (status {self._child.poll()})")
        return line.strip()

    def command(self, line: str) -> None:
        """Send one command to the child; raise MockClusterError unless it answers ok."""
        if self._child.stdin is None or self._child.poll() is not None:
            raise MockClusterError("mock cluster is not running")
        self._child.stdin.write(line + "\n")
        self._child.stdin.flush()
        answer = self._read_answer()
        if answer != "ok":
            raise MockClusterError(f"{line!r}: {answer}")

    def broker_down(self, broker_id: int) -> None:
        """Disconnect broker `broker_id` (1-based) and refuse new connections to it."""
        self.command(f"down {broker_id}")

    def broker_up(self, broker_id: int) -> None:
        """Let clients connect to broker `broker_id` again."""
        self.command(f"up {broker_id}")

    def create_topic(self, topic: str, partitions: int = 3, replication: int = 3) -> None:
        """Create `topic` with the given partition count and replication factor."""
        self.command(f"topic {topic} {partitions} {replication}")

    def set_topic_error(self, topic: str, error_code: int) -> None:
        """Make metadata responses report `error_code` for `topic` (3 = unknown topic)."""
        self.command(f"topic_error {topic} {error_code}")

    def stop(self) -> None:
        """Shut the child down (politely, then by force) and reap it."""
        if self._child.poll() is None:
            try:
                if self._child.stdin is not None:
                    self._child.stdin.write("quit\n")
                    self._child.stdin.close()
                self._child.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._child.kill()
                self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()


@contextmanager
def mock_kafka_cluster(broker_count: int = 3) -> Iterator[MockKafkaCluster]:
    """A running mock cluster of `broker_count` brokers, stopped on exit."""
    cluster = MockKafkaCluster(broker_count)
    try:
        yield cluster
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
