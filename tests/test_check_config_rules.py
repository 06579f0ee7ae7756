"""check-config says what `run` will do with a rules file: lines refused, lines ignored,
the sink it writes when none is configured; the rule parser names unsupported operators
and trailing comments. Nothing here touches the kernel (the parser and check-config only)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from auditstream.config import Config
from receiver.live import rules_and_settings
from receiver.rules import (
    OP_BIT_MASK,
    OP_EQ,
    OP_GT,
    OP_LT,
    OP_NE,
    RuleError,
    load_rule_set,
    parse_rules,
)

REPO = Path(__file__).resolve().parents[1]
EXEC_RULE = "-a always,exit -F arch=b64 -S execve -k exec"


def check_config(
    tmp_path: Path, rules: str, extra_toml: str = ""
) -> subprocess.CompletedProcess[str]:
    """``auditstream check-config`` of a config whose only rules file holds ``rules``."""
    rules_file = tmp_path / "my.rules"
    rules_file.write_text(rules)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[receiver]\nrules_files = ["{rules_file}"]\n{extra_toml}')
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "check-config", "-c", str(conf)],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_immutable_enable_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """`-e 2` (locked until reboot) is refused by check-config as by run, with file:line."""
    result = check_config(tmp_path, f"{EXEC_RULE}\n-e 2\n")
    assert result.returncode == 2, result.stdout
    assert f"{tmp_path / 'my.rules'}:2: -e 2 (immutable" in result.stderr, result.stderr
    assert "remove its rules when it stops" in result.stderr
    assert "Traceback" not in result.stderr


def test_lines_run_ignores_are_warned_with_file_and_line(tmp_path: Path) -> None:
    """-D, and settings lines the config overrides, are each named as ignored; still OK."""
    result = check_config(tmp_path, f"-D\n-b 320\n-f 2\n-e 0\n-r 0\n{EXEC_RULE}\n")
    assert result.returncode == 0, result.stderr
    where = tmp_path / "my.rules"
    for expected in (
        f"{where}:1: -D (delete all rules) is ignored: auditstream never deletes rules it did not add",
        f"{where}:2: -b 320 is ignored: auditstream applies [receiver] backlog_limit = 8192",
        f"{where}:3: -f 2 is ignored: auditstream applies [receiver] failure_mode = 1",
        f"{where}:4: -e 0 is ignored: auditstream enables auditing while it runs",
    ):
        assert expected in result.stderr, result.stderr
    assert f"{where}:5" not in result.stderr  # -r 0 is what the config applies anyway
    assert result.stdout.rstrip().endswith("1 rule), 4 warnings above"), result.stdout


def test_panic_failure_mode_in_the_config_is_warned(tmp_path: Path) -> None:
    """`[receiver] failure_mode = 2` passes, with a warning that the host panics on loss."""
    result = check_config(tmp_path, f"-f 2\n{EXEC_RULE}\n", "failure_mode = 2\n")
    assert result.returncode == 0, result.stderr
    assert "[receiver] failure_mode = 2: the kernel panics (halts) the host" in result.stderr
    assert "-f 2 is ignored" not in result.stderr  # the rules file agrees with the config
    assert "1 warning above" in result.stdout


def test_run_logs_the_same_warnings_as_check_config(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The receiver's rules_and_settings (what `run` calls) logs each ignored line too."""
    rules_file = tmp_path / "run.rules"
    rules_file.write_text(f"-D\n{EXEC_RULE}\n")
    cfg = Config(source_path="<test>")
    cfg.receiver.rules_files = [str(rules_file)]
    with caplog.at_level(logging.WARNING):
        rules, settings = rules_and_settings(cfg)
    assert len(rules) == 1 and settings.enabled == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{rules_file}:1: -D (delete all rules) is ignored: auditstream never deletes rules it "
        "did not add; it removes only its own when it stops"
    ]


def test_check_config_prints_and_counts_the_warnings_the_rules_loader_returns(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """load_rule_set returns the warnings without logging them, and check-config's stderr is those lines, in order, with their count on stdout."""
    result = check_config(tmp_path, f"-D\n-b 320\n{EXEC_RULE}\n-D\n", "failure_mode = 2\n")
    cfg = Config(source_path="<test>")
    cfg.receiver.rules_files = [str(tmp_path / "my.rules")]
    cfg.receiver.failure_mode = 2
    with caplog.at_level(logging.DEBUG):
        loaded = load_rule_set(cfg)
    assert caplog.records == [] and len(loaded.rules) == 1 and len(loaded.warnings) == 4
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"auditstream[cli] WARNING: {warning}" for warning in loaded.warnings
    ]
    assert result.stdout.rstrip().endswith("1 rule), 4 warnings above"), result.stdout


def test_no_sinks_reports_the_default_sink_run_writes(tmp_path: Path) -> None:
    """A config without [[sinks]] reports run's default jsonl sink, not 0 sinks; the
    packaged rules' -b 8192 agrees with the config's default and is not warned about."""
    conf = tmp_path / "empty.toml"
    conf.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "auditstream", "check-config", "-c", str(conf)],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        f"{conf}: OK (1 sink: run's default jsonl:/var/log/auditstream/events.jsonl "
        "(replay's: stdout), source netlink, 8 rules)\n"
    ) == result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("pair", "written"),
    [("uid=>0", "=>"), ("uid==0", "=="), ("auid<>1000", "<>"), ("a0=!1", "=!"), ("gid!==0", "!==")],
)
def test_unsupported_operator_is_named(pair: str, written: str) -> None:
    """An operator auditctl does not have is named as such, not read as a user or field name."""
    with pytest.raises(RuleError) as caught:
        parse_rules([f"-a always,exit -F arch=b64 -S execve -F {pair}".encode()], source="r")
    assert caught.value.reason == (
        f"-F {pair!r}: operator {written!r} is not supported "
        "(auditctl's operators: =, !=, <, >, <=, >=, &, &=)"
    )


def test_every_auditctl_operator_is_encoded() -> None:
    """The eight operators of auditctl(8) parse, each to the kernel's operator bits."""
    ops = {"=": OP_EQ, "!=": OP_NE, "<": OP_LT, ">": OP_GT, "<=": OP_LT | OP_EQ,
           ">=": OP_GT | OP_EQ, "&": OP_BIT_MASK, "&=": OP_BIT_MASK | OP_EQ}  # fmt: skip
    for text, bits in ops.items():
        (rule,) = parse_rules([f"-a always,exit -S execve -F a1{text}4".encode()]).rules
        assert (rule.fields[0].op, rule.fields[0].value) == (bits, 4), text


def test_trailing_comment_gets_a_clear_message(tmp_path: Path) -> None:
    """A `# comment` after a rule is refused saying to put it on its own line, as auditctl
    reads '#' only at a line's start; a comment line of its own still passes."""
    result = check_config(tmp_path, f"# the execs\n{EXEC_RULE} # the execs\n")
    assert result.returncode == 2, result.stdout
    assert (
        f"{tmp_path / 'my.rules'}:2: trailing comments are not supported (as in auditctl, '#' "
        "starts a comment only at the start of a line): put the comment on its own line"
    ) in result.stderr, result.stderr
    assert "unsupported option" not in result.stderr
