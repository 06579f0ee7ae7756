"""A sink on a full filesystem: the error is named, the loss counted, and a replay fails."""

from __future__ import annotations

from pathlib import Path

from generated_logs import write_generated_log
from live_helpers import replay


def test_a_replay_whose_sink_runs_out_of_space_says_so_and_exits_3(
    tiny_fs: Path, tmp_path: Path
) -> None:
    """ENOSPC: the error names the sink and errno, the summary counts the events not written, and the exit code is 3, not 0."""
    log = write_generated_log(tmp_path / "in.log", 6000)
    out = tiny_fs / "events.jsonl"
    result = replay(str(log), "--sink", f"jsonl:{out}", timeout=120)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 3, stderr
    assert "No space left on device" in stderr
    [line] = [x for x in stderr.splitlines() if x.startswith("auditstream: NOT WRITTEN:")]
    assert f"jsonl:{out} discarded " in line
    written = len(out.read_bytes().splitlines())
    sent = int(stderr.split(f"sent: jsonl:{out} ")[1].split()[0])
    events_out = int(stderr.split(" events out,")[0].rsplit(" ", 1)[1])
    discarded = int(line.split(" discarded ")[1].split()[0])
    # A failed write is cut back to the last whole line: what is on disk is what was sent.
    assert 0 < written == sent
    assert sent + discarded == events_out
