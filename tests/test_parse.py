"""Unit tests for assembler.parse, assembler.interpret helpers and assembler.sockaddr.

Hostile input (garbage, truncation, huge, NUL, invalid UTF-8) must give a ParseError
or a parsed record, never any other exception.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assembler.interpret import arch_name, decode_hex, errno_name, interpret, syscall_name
from assembler.parse import ParseError, Record, enriched_fields, fields, parse_record
from assembler.sockaddr import decode_sockaddr, ipv6_text
from auditstream.escape import escape, unescape
from auditstream.logline import split_log_line

SYSCALL = 1300
PROCTITLE = 1327
SOCKADDR = 1306
EXECVE = 1309
USER_ACCT = 1101


def test_header_fields() -> None:
    """SEC, MSEC, SERIAL, body and the untouched data come out of a normal record."""
    data = b"audit(1490995752.404:20614537): arch=c000003e syscall=59"
    rec = parse_record(SYSCALL, data, "host1")
    assert (rec.type, rec.node, rec.sec, rec.msec, rec.serial) == (
        SYSCALL,
        "host1",
        1490995752,
        404,
        20614537,
    )
    assert rec.body == b"arch=c000003e syscall=59"
    assert rec.enriched == b""
    assert rec.data is data


def test_msec_is_an_integer_count() -> None:
    """'.03' is 3 ms and '.030' is 30 ms, as go-libaudit reads it."""
    assert parse_record(SYSCALL, b"audit(1.03:1): x=1").msec == 3
    assert parse_record(SYSCALL, b"audit(1.030:1): x=1").msec == 30


def test_msec_overflow_carries_into_seconds() -> None:
    """More than 999 ms carries into seconds, like Go's time.Unix."""
    rec = parse_record(SYSCALL, b"audit(10.2500:1): x=1")
    assert (rec.sec, rec.msec) == (12, 500)


def test_body_without_colon_space() -> None:
    """After ')' the body starts at the first ':' or space, as go-libaudit does."""
    rec = parse_record(1305, b"audit(1481077041.515:34) config changed, auid=0")
    assert rec.body == b"config changed, auid=0"
    assert parse_record(SYSCALL, b"audit(1.2:3):x=1").body == b"x=1"
    assert parse_record(1320, b"audit(1.2:3)").body == b""


def test_enriched_trailer_split() -> None:
    """The ENRICHED trailer after 0x1d is split off the body and parsed by key."""
    data = (
        b'audit(1.2:3): arch=c000003e key=(null)\x1dARCH=x86_64 AUID="user" '
        b"SADDR={ fam=local path=/tmp/{x} } S2=unknown family(0)"
    )
    rec = parse_record(SYSCALL, data)
    assert rec.body == b"arch=c000003e key=(null)"
    assert enriched_fields(rec.enriched) == {
        "ARCH": b"x86_64",
        "AUID": b"user",
        "SADDR": b"{ fam=local path=/tmp/{x} }",
        "S2": b"unknown family(0)",
    }


def test_fields_keep_order_duplicates_and_quoting() -> None:
    """fields() keeps duplicates and order, strips one pair of quotes and flags them."""
    body = b"uid=0 uid=1 comm=\"a b\" msg='op=x res=1' a1[0]=zz mac= exe=?"
    assert fields(body) == [
        (b"uid", b"0", False),
        (b"uid", b"1", False),
        (b"comm", b"a b", True),
        (b"msg", b"op=x res=1", True),
        (b"exe", b"?", False),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"audit(",
        b"audit(1490995752.404",
        b"audit(1490995752.404:",
        b"audit(1490995752.404:123",
        b"audit(1490995752:123): x=1",
        b"audit(1490995752.404:): x=1",
        b"audit(.404:5): x=1",
        b"audit(1x.404:5): x=1",
        b"audit(-1.404:5): x=1",
        b"audit(1.404:+5): x=1",
        b"audit(1.2:4294967296): x=1",
        b"audit(99999999999999999999999.1:1): x=1",
        b"x audit(1.2:3): x=1",
        b"audit(1.\x002:3): x=1",
        b"audit(\xff\xfe.1:1): x=1",
        b"?",
    ],
)
def test_bad_headers_raise_parse_error(data: bytes) -> None:
    """Garbage, truncated headers, missing serials and out-of-range numbers raise ParseError."""
    with pytest.raises(ParseError):
        parse_record(SYSCALL, data)


def test_largest_serial_parses() -> None:
    """The largest 32-bit serial is valid."""
    assert parse_record(SYSCALL, b"audit(1.2:4294967295): x=1").serial == 2**32 - 1


def test_huge_record_parses() -> None:
    """A 9000-byte record with a long hex proctitle parses and decodes."""
    title = b"A" * 4480
    data = b"audit(1.2:3): proctitle=" + b"41" * 4480
    rec = parse_record(PROCTITLE, data)
    assert len(rec.data) > 8960
    assert interpret(rec).data["proctitle"] == title.decode()


def test_ten_thousand_fields() -> None:
    """10k fields parse; the later duplicate wins in interpret, fields() keeps all."""
    body = b" ".join(b"k%d=%d" % (i % 5000, i) for i in range(10_000))
    rec = parse_record(SYSCALL, b"audit(1.2:3): " + body)
    assert len(fields(rec.body)) == 10_000
    data = interpret(rec).data
    assert len(data) == 5000 and data["k0"] == "5000"


def test_pathological_bodies_stay_fast() -> None:
    """Long key-like runs, unterminated quotes and nested msg= do not go quadratic."""
    for body in (b"x" * 9000, b"a='" * 3000, b'k="' * 3000, b"msg=" * 2000 + b"x=1"):
        start = time.perf_counter()
        interpret(parse_record(USER_ACCT, b"audit(1.2:3): " + body))
        assert time.perf_counter() - start < 0.5, body[:12]


def test_nul_bytes_in_body() -> None:
    """NUL bytes in raw values are %-escaped; NULs in hex proctitle become spaces."""
    rec = parse_record(SYSCALL, b'audit(1.2:3): comm=a\x00b exe="x\x00y"')
    assert interpret(rec).data == {"comm": "a%00b", "exe": "x%00y"}
    title = parse_record(PROCTITLE, b"audit(1.2:3): proctitle=6368726F6E7964002D71")
    assert interpret(title).data["proctitle"] == "chronyd -q"


def test_invalid_utf8_is_escaped_reversibly() -> None:
    """Values that are not UTF-8 are %-escaped and round-trip; valid UTF-8 stays text."""
    rec = parse_record(SYSCALL, b'audit(1.2:3): comm="\xff\xfe%" exe="/bin/\xc3\xa9"')
    data = interpret(rec).data
    assert unescape(data["comm"]) == b"\xff\xfe%"
    assert data["exe"] == "/bin/\u00e9"
    hexed = parse_record(EXECVE, b"audit(1.2:3): argc=1 a0=FF41")
    assert unescape(interpret(hexed).data["a0"]) == b"\xffA"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff" * 65536, "%ff" * 65536),  # every byte its own invalid sequence
        (b"\xe2\x82" * 30000, "%e2%82" * 30000),  # truncated sequences, one after another
        (bytes(range(32)) * 2048, "".join(f"%{b:02x}" for b in range(32)) * 2048),
        (b"\xe2\x82A\xed\xb2\x80\xc3\xa9%\xef\xbb\xbf", "%e2%82A%ed%b2%80\u00e9%25%ef%bb%bf"),
    ],
    ids=["ff", "truncated", "controls", "mixed"],
)
def test_hostile_bytes_escape_each_byte_exactly(raw: bytes, expected: str) -> None:
    """64 KiB of invalid UTF-8 or control bytes escape byte for byte (one decode, not one per
    invalid sequence) and map back exactly; a valid character between them stays text."""
    assert escape(raw) == expected
    assert unescape(expected) == raw


def test_decoded_control_characters_are_escaped() -> None:
    """Decoded bytes with control characters or '%' are %-escaped, so they map back exactly."""
    rec = parse_record(1319, b"audit(1.2:3): data=1B5B410D25")
    assert interpret(rec).data["data"] == "%1b[A%0d%25"
    assert unescape(interpret(rec).data["data"]) == b"\x1b[A\r%"


def test_percent_in_plain_ascii_value_is_escaped() -> None:
    """A '%' in an otherwise plain ASCII raw value becomes %25 (every value is reversible)."""
    rec = parse_record(SYSCALL, b'audit(1.2:3): comm="100%" pid=7')
    assert interpret(rec).data == {"comm": "100%25", "pid": "7"}


def test_exact_fields_keep_every_byte() -> None:
    """Fields asked for exactly keep quote/space edges and get hex comm decoded."""
    rec = parse_record(SYSCALL, b'audit(1.2:3): comm=41004225 exe=" /x\'" pid=1')
    plain = interpret(rec).data
    exact = interpret(rec, exact=("comm", "exe")).data
    assert plain["comm"] == "41004225" and plain["exe"] == "/x"
    assert exact["comm"] == "A B%25" and exact["exe"] == " /x'"


def test_interpret_rules() -> None:
    """unset ids, subj split, result, errno name, syscall name and hex exe in one record."""
    rec = parse_record(
        SYSCALL,
        b"audit(1.2:3): arch=c000003e syscall=2 success=no exit=-13 auid=4294967295 "
        b'ses=-1 subj=u:r:t:s0-s0:c0.c1023 exe=2F62696E2F6C73 key="key=net"',
    )
    got = interpret(rec)
    assert got.keys == ["net"]
    assert got.data == {
        "arch": "x86_64",
        "syscall": "open",
        "result": "fail",
        "exit": "EACCES",
        "auid": "unset",
        "ses": "unset",
        "subj_user": "u",
        "subj_role": "r",
        "subj_domain": "t",
        "subj_level": "s0-s0",
        "subj_category": "c0.c1023",
        "exe": "/bin/ls",
    }


def test_lower_case_hex_and_quoted_hex_are_not_decoded() -> None:
    """go-libaudit decodes only unquoted upper-case hex."""
    rec = parse_record(PROCTITLE, b"audit(1.2:3): proctitle=6e63002d6c")
    assert interpret(rec).data["proctitle"] == "6e63002d6c"
    rec = parse_record(PROCTITLE, b'audit(1.2:3): proctitle="4142"')
    assert interpret(rec).data["proctitle"] == "4142"


def test_missing_fields_do_not_raise() -> None:
    """Records lacking the fields a step needs keep their other fields (no exception)."""
    assert interpret(parse_record(SYSCALL, b"audit(1.2:3): pid=1 exe=(null)")).data == {"pid": "1"}
    assert interpret(parse_record(EXECVE, b"audit(1.2:3): argc=3 a0=4142")).data == {
        "argc": "3",
        "a0": "AB",
    }
    assert interpret(parse_record(SOCKADDR, b"audit(1.2:3): saddr=0")).data == {"saddr": "0"}


def test_helpers() -> None:
    """arch_name, syscall_name, errno_name and decode_hex follow go-libaudit's tables."""
    assert arch_name("c000003e") == "x86_64"
    assert arch_name("40000003") == "i386"
    assert arch_name("c00000b7") == "aarch64"
    assert arch_name("80000015") == "ppc64"
    assert arch_name("1234") == "unknown[1234]"
    assert arch_name("zz") == "zz"
    assert syscall_name("x86_64", 59) == "execve"
    assert syscall_name("aarch64", 221) == "execve"
    assert syscall_name("i386", 11) == "execve"
    assert syscall_name("ppc64", 327) == "bind"
    assert syscall_name("x86_64", 99999) == "99999"
    assert syscall_name("nosuch", 1) == "1"
    assert errno_name(115) == "EINPROGRESS"
    assert errno_name(11) == "EAGAIN"
    assert errno_name(9999) is None
    assert decode_hex(b"41420043") == b"AB\x00C"
    assert decode_hex(b"4142a") is None
    assert decode_hex(b"41ab") is None


@pytest.mark.parametrize(
    ("saddr", "expected"),
    [
        (
            b"02000050A9FEA9FE0000000000000000",
            {"family": "ipv4", "addr": "169.254.169.254", "port": "80"},
        ),
        (
            b"0002D903000000000000000000000000",
            {"family": "ipv4", "addr": "0.0.0.0", "port": "55555"},
        ),
        (
            b"0A000016000000000000000000000000000000000000000000000000",
            {"family": "ipv6", "addr": "::", "port": "22"},
        ),
        (
            b"0A002BCB0000000120010DB8000000000000000000000001",
            {"family": "ipv6", "addr": "2001:db8::1", "port": "11211", "flow": "1"},
        ),
        (b"0A000050" + b"0" * 8 + b"00000000000000000000FFFF7F0000", None),
        (
            b"0A000050" + b"0" * 8 + b"00000000000000000000FFFF7F000001",
            {"family": "ipv6", "addr": "127.0.0.1", "port": "80"},
        ),
        (b"01002F746D702F736F636B00", {"family": "unix", "path": "/tmp/sock"}),
        (b"0100002F6162", {"family": "unix", "path": ""}),
        (b"100000000000", {"family": "netlink", "saddr": "100000000000"}),
        (b"0000", {"family": "0", "saddr": "0000"}),
        (b"2C00", {"family": "44", "saddr": "2C00"}),
        (b"02", None),
        (b"ZZ00", None),
        (b"0200", None),
    ],
)
def test_sockaddr(saddr: bytes, expected: dict[str, str] | None) -> None:
    """SOCKADDR families decode as go-libaudit does; big-endian families are recognised."""
    assert decode_sockaddr(saddr) == expected


def test_ipv6_text_matches_go() -> None:
    """Go's net.IP text: longest zero run compressed (first on ties), no single-group '::'."""
    assert ipv6_text(bytes(16)) == "::"
    assert ipv6_text(bytes(15) + b"\x01") == "::1"
    assert ipv6_text(bytes.fromhex("20010db8000000010000000000000001")) == "2001:db8:0:1::1"
    assert ipv6_text(bytes.fromhex("20010db8000100000001000000000001")) == "2001:db8:1:0:1::1"
    assert ipv6_text(bytes.fromhex("00010000000000010000000000000001")) == "1:0:0:1::1"
    assert ipv6_text(bytes.fromhex("00010000000000010000000000010001")) == "1::1:0:0:1:1"
    assert ipv6_text(bytes.fromhex("fe800000000000000000000000000001")) == "fe80::1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([0, 1006, 1101, 1300, 1306, 1309, 1327, 1400]))
def test_random_bytes_only_raise_parse_error(data: bytes, record_type: int) -> None:
    """Random data gives ParseError or a Record that interprets without raising."""
    for candidate in (data, b"audit(1.2:3): " + data):
        try:
            rec = parse_record(record_type, candidate)
        except ParseError:
            continue
        assert isinstance(rec, Record)
        interpret(rec)
        fields(rec.body)
        enriched_fields(rec.enriched)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "arch",
                    "syscall",
                    "exit",
                    "saddr",
                    "a0",
                    "argc",
                    "key",
                    "msg",
                    "subj",
                    "sig",
                    "proctitle",
                    "res",
                    "auid",
                    "cwd",
                    "name",
                ]
            ),
            st.text(alphabet="0123456789ABCDEFabcdef-=:'\" ?()\x00\x01", max_size=20),
        ),
        max_size=12,
    ),
    st.sampled_from([1006, 1104, 1300, 1302, 1306, 1309, 1326, 1327, 1400]),
)
def test_random_fields_never_raise(pairs: list[tuple[str, str]], record_type: int) -> None:
    """Field-shaped random bodies for every interpreted record type never raise."""
    body = " ".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogateescape")
    interpret(parse_record(record_type, b"audit(1.2:3): " + body))


@pytest.mark.slow
def test_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    """Header parsing and interpretation over the corpus lines keep well above a low floor."""
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    if not corpus.is_dir():
        pytest.skip(f"conformance corpus not found at {corpus}")
    files = [*(corpus / "go-libaudit").rglob("*.log"), *(corpus / "laurel").rglob("*.txt")]
    raw = []
    for path in files:
        for line in path.read_bytes().split(b"\n"):
            if line.startswith((b"type=", b"node=")) and b"msg=audit(" in line:
                raw.append(split_log_line(line))
    work = raw * (50_000 // len(raw))
    start = time.perf_counter()
    parsed = [parse_record(t, d, n) for t, d, n in work]
    parse_rate = len(work) / (time.perf_counter() - start)
    start = time.perf_counter()
    for rec in parsed:
        interpret(rec)
    interpret_rate = len(work) / (time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nparse_record {parse_rate:,.0f}/s, interpret {interpret_rate:,.0f}/s")
    # Floors far below the targets (100k / 20k per s) so a busy CI host does not flake.
    assert parse_rate > 30_000 and interpret_rate > 8_000


HOSTILE_USER_LOGIN = (
    b"audit(1700000000.123:77): pid=123 uid=1000 auid=1000 ses=3 subj=unconfined msg='op=login"
    b' acct="zz" exe="/usr/bin/x" hostname=? addr=? terminal=? res=success\x1dUID="root"'
    b' AUID="root"\''
)


def test_without_trailer_0x1d_is_body() -> None:
    """trailer=False (kernel records) keeps a 0x1d and what follows in the body, on both header paths."""
    for data in (HOSTILE_USER_LOGIN, HOSTILE_USER_LOGIN.replace(b"): ", b"):", 1)):
        rec = parse_record(1112, data, trailer=False)
        assert rec.enriched == b"" and rec.body.endswith(b'res=success\x1dUID="root" AUID="root"\'')
        assert parse_record(1112, data).enriched == b'UID="root" AUID="root"\''


@pytest.mark.parametrize("source", ["netlink", "multicast", "file", "stdin"])
def test_kernel_sources_do_not_read_a_trailer(source: str) -> None:
    """From the kernel (netlink, multicast) a user message's 0x1d names no user; from a log
    (auditd may have written ENRICHED text) it starts the trailer, as ausearch reads it."""
    from assembler.stage import Assembly
    from auditstream.config import Config

    cfg = Config()
    cfg.receiver.source = source
    assembly = Assembly(cfg, event_time=True)
    assembly.push_batch([[1112, HOSTILE_USER_LOGIN, ""]])
    (event,) = assembly.out
    user = event["doc"]["user"]
    assert event["doc"]["auditd"]["records"][0].endswith('res=success%1dUID="root" AUID="root"\'')
    if source in ("netlink", "multicast"):
        assert "name" not in user and "name" not in user["audit"], user
    else:
        assert user["name"] == "root", user
