"""Rule parsing and encoding: byte-compared with libaudit (auditctl's own encoder), bad lines."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.rules import (
    FILTER_EXIT,
    FILTER_PREPEND,
    FILTER_TASK,
    PERM_LETTERS,
    RULE_HEADER,
    RuleError,
    decode_rule,
    load_rules,
    parse_rules,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RULES = REPO / "deploy" / "rules" / "default.rules"

# Watches and filters; lines libaudit can encode without asking the kernel for features.
WATCH_AND_FILTER_RULES = b"""\
# watches
-w /etc/passwd -p wa -k identity
-w /etc/sudoers.d/ -p rwxa -k priv
-w /tmp -k tmpdir
-w /nonexistent/auditstream-test -p x
-a always,exit -F arch=b64 -S openat,open -F exit=-EACCES -F auid>=1000 -F auid!=unset -k access
-a never,exit -F arch=b32 -S 11 -F pid=1 -F ppid=1
-A exit,always -F arch=b64 -S all -F path=/etc/shadow -F perm=r -k shadow
-a always,exit -F dir=/var/log -F perm=wa -F uid=0 -F gid=0 -F euid=root
-a always,exit -F arch=b64 -S kill -F a1=9 -F success=0 -F exit<=-1 -k k1 -k k2
-a always,exit -F arch=x86_64 -S socket -F a0&2 -F a2&=6
-a always,task -F uid=0
-a always,exit -F filetype=file -F inode=12345 -F devmajor=8
"""


def _libaudit() -> ctypes.CDLL:
    """Load libaudit (auditctl's rule encoder) or skip."""
    name = ctypes.util.find_library("audit")
    if name is None:
        pytest.skip("libaudit.so (package libaudit1) is not installed: no reference encoder")
    lib = ctypes.CDLL(name)
    lib.audit_rule_create_data.restype = ctypes.c_void_p
    lib.audit_rule_syscallbyname_data.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.audit_rule_fieldpair_data.argtypes = [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_int
    ]  # fmt: skip
    lib.audit_add_watch_dir.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_char_p,
    ]
    lib.audit_update_watch_perms.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.audit_rule_free_data.argtypes = [ctypes.c_void_p]
    return lib


def libaudit_encode(lib: ctypes.CDLL, line: str) -> bytes:
    """Encode one rule line by driving libaudit the way auditctl 3.0.9's option loop does."""
    for flag in ("_audit_elf", "_audit_syscalladded", "_audit_permadded", "_audit_exeadded",
                 "_audit_archadded", "_audit_filterfsadded"):  # fmt: skip
        ctypes.c_int.in_dll(lib, flag).value = 0
    rule = ctypes.c_void_p(lib.audit_rule_create_data())
    tokens = line.split()
    flags = action = -1
    keys: list[str] = []
    syscall_added = False
    for option, value in zip(tokens[::2], tokens[1::2], strict=True):
        if option in ("-a", "-A"):
            parts = value.split(",")
            lst = next(p for p in parts if p not in ("always", "never"))
            act = next(p for p in parts if p in ("always", "never"))
            flags = {"exit": 4, "task": 1, "user": 0, "exclude": 5}[lst]
            flags |= FILTER_PREPEND if option == "-A" else 0
            action = 2 if act == "always" else 0
        elif option == "-S":
            for name in value.split(","):
                assert lib.audit_rule_syscallbyname_data(rule, name.encode()) == 0, name
            ctypes.c_int.in_dll(lib, "_audit_syscalladded").value = 1
            syscall_added = True
        elif option == "-F":
            if value.startswith("key="):
                keys.append(value[4:])
                continue
            rc = lib.audit_rule_fieldpair_data(ctypes.byref(rule), value.encode(), flags & 0xF)
            assert rc == 0, (value, rc)
        elif option == "-k":
            keys.append(value)
        elif option == "-w":
            path = value.rstrip("/") if len(value) > 2 else value
            is_dir = os.path.exists(path) and stat.S_ISDIR(os.stat(path).st_mode)
            assert (
                lib.audit_add_watch_dir(107 if is_dir else 105, ctypes.byref(rule), path.encode())
                == 0
            )
            flags, action, syscall_added = FILTER_EXIT, 2, True
            ctypes.c_int.in_dll(lib, "_audit_syscalladded").value = 1
        elif option == "-p":
            bits = sum(PERM_LETTERS[c] for c in value)
            assert lib.audit_update_watch_perms(rule, bits) == 0
    if keys:
        pair = ("key=" + "\x01".join(keys)).encode()
        assert lib.audit_rule_fieldpair_data(ctypes.byref(rule), pair, flags & 0xF) == 0
    if flags & 0xF != FILTER_TASK and not syscall_added:
        lib.audit_rule_syscallbyname_data(rule, b"all")
    assert rule.value is not None
    header = ctypes.string_at(rule.value, RULE_HEADER.size)
    buflen = int.from_bytes(header[-4:], "little")
    data = bytearray(ctypes.string_at(rule.value, RULE_HEADER.size + buflen))
    lib.audit_rule_free_data(rule)
    # auditctl sets flags/action when sending (audit_add_rule_data); do the same here
    data[0:4] = flags.to_bytes(4, "little")
    data[4:8] = action.to_bytes(4, "little")
    return bytes(data)


def _rule_lines(text: bytes) -> list[str]:
    """The rule lines of a rules file (no comments, blanks or settings)."""
    lines = [line.strip() for line in text.decode().splitlines()]
    return [line for line in lines if line.startswith(("-a", "-A", "-w"))]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reference lines use x86_64 names")
@pytest.mark.parametrize("source", ["default", "watch_and_filter"])
def test_encoding_matches_libaudit(source: str) -> None:
    """Every rule we encode is byte-identical to auditctl's libaudit encoding of the line."""
    lib = _libaudit()
    text = DEFAULT_RULES.read_bytes() if source == "default" else WATCH_AND_FILTER_RULES
    ours = parse_rules(text.splitlines(), source=source).rules
    lines = _rule_lines(text)
    assert len(ours) == len(lines)
    for rule, line in zip(ours, lines, strict=True):
        assert rule.encode() == libaudit_encode(lib, line), line


def test_decode_round_trip() -> None:
    """Decoding an encoded rule gives back the same rule."""
    for rule in parse_rules(WATCH_AND_FILTER_RULES.splitlines()).rules:
        assert decode_rule(rule.encode()) == rule


def test_default_rules_file() -> None:
    """The shipped default rules load, cover process and network syscalls and raise the backlog."""
    rule_file = load_rules(DEFAULT_RULES)
    assert rule_file.settings.backlog_limit is not None and rule_file.settings.backlog_limit >= 8192
    assert not rule_file.delete_all
    keys = {f.text for r in rule_file.rules for f in r.fields if f.field == 210}
    assert keys == {b"auditstream-proc", b"auditstream-net"}
    execve_b64 = 59
    assert any(r.mask[execve_b64 // 32] & (1 << execve_b64 % 32) for r in rule_file.rules)


def test_settings_and_delete_all() -> None:
    """Control lines set the kernel settings and -D is reported, not turned into a rule."""
    rule_file = parse_rules(
        [b"-D", b"-b 320", b"--backlog_wait_time 0", b"-f 2", b"-r 100", b"-e 1", b"  # x", b""]
    )
    assert rule_file.delete_all and rule_file.rules == []
    s = rule_file.settings
    assert (s.backlog_limit, s.backlog_wait_time, s.failure, s.rate_limit, s.enabled) == (
        320, 0, 2, 100, 1
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"-a always,exit -S nosuchcall", "syscall name unknown"),
        (b"-a always,exit -S execve -F arch=b64", "arch must be given before -S"),
        (b"-a possible,exit -S execve", "deprecated"),
        (b"-a always,exit,task", "action,list"),
        (b"-a always,exit -F auid", "no operator"),
        (b"-a always,exit -F bogus=1", "unknown field"),
        (b"-a always,exit -F exit=-ENOTANERRNO", "unknown errno"),
        (b"-a always,task -F exit=1", "only valid on the exit list"),
        (b"-a always,exit -F perm=rwxz", "only r, w, x, a"),
        (b"-w relative/path", "must start with '/'"),
        (b"-k lonely", "needs a watch or syscall"),
        (b"-a always,exit -S execve -k " + b"k" * 300, "exceeds size limit"),
        (b"-e 3", "from 0 to 2"),
        (b"-b lots", "needs a number"),
        (b"-a always,exit -S", "needs a value"),
        (b"-R other.rules", "unsupported option"),
        (b"-a always,exit -F uid=no-such-user-here", "unknown user"),
        (b"-a always,exit -F a0=x", "not a number"),
        (b"-a always,exit\x00 -S execve", "NUL"),
    ],
)
def test_bad_line_names_file_line_and_reason(line: bytes, reason: str, tmp_path: Path) -> None:
    """A bad rule line raises RuleError naming the file, the line number and why."""
    path = tmp_path / "bad.rules"
    path.write_bytes(b"# first line is fine\n-a always,exit -F arch=b64 -S execve\n" + line + b"\n")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.line == 3
    assert caught.value.source == str(path)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}:3: ")


def test_non_utf8_watch_path_kept_byte_exact() -> None:
    """A watch path that is not UTF-8 is encoded with its exact bytes."""
    (rule,) = parse_rules([b"-w /srv/\xff\xfe-name -p w"]).rules
    assert rule.fields[0].text == b"/srv/\xff\xfe-name"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_lines_raise_rule_error_only(line: bytes) -> None:
    """Arbitrary bytes either parse or raise RuleError; nothing else escapes."""
    try:
        parse_rules([line])
    except RuleError as exc:
        assert exc.line == 1
