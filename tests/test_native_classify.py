"""The C exec's shortcut past containers.classify (treekeeper/csrc/enrich_exec.h, plain_image)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from native_helpers import native_module
from test_tree import execve, fork

from treekeeper import containers
from treekeeper.containers import RuntimeRole, classify
from treekeeper.tree import ProcessTable, TableConfig

native: Any = native_module("treekeeper.native_enrich")

_PART = st.sampled_from(
    ["", "/", "//", "bin", "usr", "ls", "runc", "crun", "youki", "docker-runc", "runsc",
     "containerd-shim", "containerd-shim-runc-v2", "containerd-shi", "xrunc", "runc.", "é", "\u4e2d"]
)  # fmt: skip
_PATH = st.lists(_PART, max_size=5).map("".join)
_EXE = st.one_of(st.none(), _PATH)
_ARGS = st.one_of(st.none(), st.lists(_PATH, max_size=3))


@given(_EXE, _ARGS)
@settings(max_examples=600, deadline=None)
@example("/usr/bin/ls", ["runc/"])
@example("/usr/libexec/containerd-shim-runc-v2", ["x"])
@example("/", [])
def test_plain_means_classify_says_none(executable: str | None, args: list[str] | None) -> None:
    """Where the C says plain, classify says (NONE, None); where classify says anything
    else, the C does not say plain; names of neither kind are plain."""
    said = classify(executable, args)
    plain = native.plain_image(executable, args)
    if plain:
        assert said == (RuntimeRole.NONE, None)
    names = [containers._basename(executable), containers._basename(args[0]) if args else ""]
    special = any(
        n.startswith("containerd-shim") or n in containers._RUNTIME_BINARIES for n in names
    )
    assert plain == (not special)


def test_values_classify_reads_otherwise_are_left_to_it() -> None:
    """A str subclass, a tuple of args or a non-str first arg: the C asks classify."""

    class Text(str):
        __slots__ = ()

    assert native.plain_image(Text("/usr/bin/ls"), None) is False
    assert native.plain_image("/usr/bin/ls", ("ls",)) is False
    assert native.plain_image("/usr/bin/ls", [b"ls"]) is False


def test_a_replaced_classify_is_still_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut holds only for containers.classify as imported: a replaced one is called."""
    calls: list[tuple[Any, Any]] = []

    def spy(executable: Any, args: Any) -> Any:
        calls.append((executable, args))
        return classify(executable, args)

    monkeypatch.setattr(containers, "classify", spy)
    table = ProcessTable(TableConfig())
    table.observe(fork(1000, 100, 1, 200))
    table.observe(execve(1010, 200, 100, "/usr/bin/ls", ["ls", "-l"]))
    assert calls[-1] == ("/usr/bin/ls", ["ls", "-l"])  # the exec asked it (the fork may too)
    assert table.processes[table.current[200]].executable == "/usr/bin/ls"
