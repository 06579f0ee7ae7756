"""Configuration values that used to pass check-config and then crash or hang a replay:
each is refused with its key named, and the smallest allowed values still replay in full."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import live_helpers
import pytest
from test_tree import exit_group, fork

from auditstream import config
from auditstream.config import INT_RANGES, MAX_ASSEMBLERS, ConfigError
from sinks.config import MAX_KEEP_FILES
from treekeeper.tree import ProcessTable, TableConfig

REPO = Path(__file__).resolve().parents[1]

# (TOML, the key the message must name, words of the reason it must give or ""): the
# acceptance tester's configs first, then one past the top of every integer key's range.
REFUSED = [
    ("[assembler]\ninstances = 1000000\n", "[assembler].instances", "tree keeper"),
    ('[runtime]\nlog_level = "chatty"\n', "[runtime].log_level", "debug, info"),
    ("[assembler]\nmax_in_flight = 1000000000000000000000\n", "[assembler].max_in_flight", ""),
    ("[treekeeper]\nmax_processes = 0\n", "[treekeeper].max_processes", "ancestors"),
    ("[receiver]\nreplay_buffer_batches = 1\n", "[receiver].replay_buffer_batches", "10 s"),
    ("[treekeeper]\nancestry_max_depth = -3\n", "[treekeeper].ancestry_max_depth", ""),
    ("[assembler]\nevent_timeout_ms = -5\n", "[assembler].event_timeout_ms", ""),
    ("[treekeeper]\nmax_processes = 2\n", "[treekeeper].max_processes", "ancestors"),
    ("[receiver]\nreplay_buffer_batches = 3\n", "[receiver].replay_buffer_batches", "10 s"),
    ("[treekeeper]\nexit_grace_ms = -1\n", "[treekeeper].exit_grace_ms", ""),
    ("[receiver]\nbatch_max_ms = -1\n", "[receiver].batch_max_ms", ""),
] + [
    (f"[{section}]\n{key} = {allowed.high + 1}\n", f"[{section}].{key}", allowed.why_high)
    for (section, key), allowed in INT_RANGES.items()
]
TESTER_FOUND = REFUSED[:7]  # /tmp/acc/REPORT.md, findings 1 and 4


def write_config(tmp_path: Path, toml: str) -> Path:
    """``toml`` as a config file in ``tmp_path``."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return path


@pytest.mark.parametrize(("toml", "key", "reason"), REFUSED)
def test_an_out_of_range_value_is_refused_naming_the_key(
    tmp_path: Path, toml: str, key: str, reason: str
) -> None:
    """Loading the file raises a ConfigError naming the file and the key, with the reason."""
    path = write_config(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    message = str(caught.value)
    assert str(path) in message and key in message and reason in message


@pytest.mark.parametrize(("section", "key"), list(INT_RANGES))
def test_both_ends_of_each_range_are_accepted(section: str, key: str) -> None:
    """The lowest and the highest value of every integer key load (0 too where it means a default)."""
    allowed = INT_RANGES[section, key]
    values = [allowed.low, allowed.high] + ([0] if allowed.zero_means else [])
    for value in values:
        cfg = config.from_dict({section: {key: value}})
        assert getattr(getattr(cfg, section), key) == value


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error", "critical"])
def test_log_levels_are_taken_in_any_case(level: str) -> None:
    """Every level name logging knows is accepted whatever its case, as logs.setup() takes it."""
    assert config.from_dict({"runtime": {"log_level": level}}).runtime.log_level == level


def test_keep_files_past_its_bound_is_refused_by_check_config(tmp_path: Path) -> None:
    """A sink's keep_files above MAX_KEEP_FILES (a rotation would never end) names the sink and key."""
    conf = write_config(
        tmp_path,
        f'[[sinks]]\ntype = "jsonl"\npath = "{tmp_path / "e.jsonl"}"\n'
        f"keep_files = {MAX_KEEP_FILES + 1}\n",
    )
    result = check_config(conf)
    assert result.returncode == 2
    assert "sinks[jsonl].keep_files" in result.stderr and str(MAX_KEEP_FILES) in result.stderr


def check_config(conf: Path) -> subprocess.CompletedProcess[str]:
    """``auditstream check-config -c conf``."""
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "check-config", "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )


@pytest.mark.parametrize(("toml", "key", "reason"), TESTER_FOUND)
def test_check_config_exits_non_zero_naming_the_key(
    tmp_path: Path, toml: str, key: str, reason: str
) -> None:
    """`auditstream check-config` on a file the tester found accepted now exits 2 naming the key."""
    result = check_config(write_config(tmp_path, toml))
    assert result.returncode == 2, result.stdout
    assert key in result.stderr and reason in result.stderr and "Traceback" not in result.stderr


def replay(*args: str, timeout: float) -> tuple[int, str]:
    """``auditstream replay ARGS``: its exit code and stderr."""
    done = live_helpers.replay(*args, timeout=timeout)
    return done.returncode, done.stderr.decode(errors="replace")


@pytest.mark.parametrize("count", [str(MAX_ASSEMBLERS + 1), "100000"])
def test_too_many_assemblers_on_the_command_line_stop_before_any_fork(
    tmp_path: Path, count: str
) -> None:
    """`replay --assemblers N` past the cap exits 2 within seconds naming the option, starting nothing."""
    log = tmp_path / "a.log"
    log.write_text("")
    sink = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, stderr = replay(str(log), "--assemblers", count, "--sink", f"jsonl:{sink}", timeout=30)
    assert time.monotonic() - started < 5
    assert code == 2
    assert "--assemblers" in stderr and f"1..{MAX_ASSEMBLERS}" in stderr
    assert "stage pids" not in stderr and not sink.exists()


def test_too_many_assemblers_in_the_config_stop_a_replay_before_any_fork(tmp_path: Path) -> None:
    """[assembler] instances past the cap in the file given to replay exits 2 at once, nothing started."""
    log = tmp_path / "a.log"
    log.write_text("")
    sink = tmp_path / "out.jsonl"
    conf = write_config(tmp_path, "[assembler]\ninstances = 100000\n")
    started = time.monotonic()
    code, stderr = replay(str(log), "-c", str(conf), "--sink", f"jsonl:{sink}", timeout=30)
    assert time.monotonic() - started < 5
    assert code == 2 and "[assembler].instances" in stderr
    assert "stage pids" not in stderr and not sink.exists()


@pytest.fixture
def alarm() -> Iterator[None]:
    """SIGALRM after 20 s raises TimeoutError in the test: a spinning loop fails, not hangs."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError("still running after 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_a_tiny_process_table_evicts_instead_of_spinning(alarm: None, limit: int) -> None:
    """With max_processes 0, 1 or 2 (built in code) every fork and exit is taken; 0 spun for ever."""
    table = ProcessTable(TableConfig(max_processes=limit))
    for i in range(50):
        child = 1000 + i
        table.observe(fork(i, 2, 1, child))
        table.observe(exit_group(i, child, 2))
    assert len(table) <= max(limit, 1)
    assert table.stats.evicted_exited + table.stats.evicted_inferred + table.stats.evicted_live > 0


@pytest.fixture(scope="module")
def generated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30,000-line exec-heavy log from bench/gen_log.py: 1,305 processes."""
    path = tmp_path_factory.mktemp("gen") / "g.log"
    subprocess.run(
        [sys.executable, "bench/gen_log.py", "--lines", "30000", "--out", str(path)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return path


def audit_serials(jsonl: Path) -> list[int]:
    """The auditd.sequence of every audit event in a jsonl output (lifecycle docs have none)."""
    docs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return sorted(d["auditd"]["sequence"] for d in docs if "auditd" in d)


def log_serials(log: Path) -> list[int]:
    """Each distinct serial of the log once: the events a replay must write."""
    return sorted(
        {int(line.split(":", 1)[1].split(")", 1)[0]) for line in log.read_text().splitlines()}
    )


@pytest.mark.parametrize(
    "toml",
    [
        # Exited processes kept for an hour: the 1,305 of the log overflow the table.
        "[treekeeper]\nmax_processes = 1024\nexit_grace_ms = 3600000\n",
        "[receiver]\nreplay_buffer_batches = 4\n",
    ],
)
def test_a_replay_with_the_smallest_allowed_value_writes_every_event(
    tmp_path: Path, generated_log: Path, toml: str
) -> None:
    """The smallest max_processes / replay_buffer_batches replays the log in seconds, every event once."""
    conf = write_config(tmp_path, toml)
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, stderr = replay(str(generated_log), "-c", str(conf), "--sink", f"jsonl:{out}", timeout=90)
    elapsed = time.monotonic() - started
    assert code == 0, stderr
    assert audit_serials(out) == log_serials(generated_log)
    assert "replay buffer of" not in stderr  # no batch waited out ACK_WAIT_MAX_S
    assert elapsed < 30  # replay_buffer_batches = 1 took ~10 s per batch
