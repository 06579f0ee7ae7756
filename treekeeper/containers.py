"""Which container a process is in: from its cgroup file, or from the runtime's command line.

Live, /proc/PID/cgroup names the container (docker, containerd, CRI-O, podman,
kubepods; cgroup v1 and v2). In a replay only the log is there, so the container
runtimes' own command lines tell us: a containerd shim is started with
``-id <container id>`` (v1 shims: ``-workdir …/<id>``), runc/crun with
``--bundle …/<id>`` (or ``-b``) or the id as a positional argument. The tree
(tree.py) decides which processes below those runtimes are inside the container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# A container id is 64 lower-case hex characters, not part of a longer hex run.
_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_ID_EXACT = re.compile(r"[0-9a-f]{64}")
# Monitors that live in a container's name but not inside it (conmon, podman/CRI-O).
_NOT_INSIDE = ("conmon-",)
# cgroup path markers, checked on the text just before the id; first match wins.
_RUNTIME_MARKERS = (
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
    ("docker-", "docker"),
    ("/docker/", "docker"),
    ("/containerd/", "containerd"),
)
_RUNTIME_BINARIES = frozenset({"runc", "crun", "youki", "docker-runc", "runsc"})
# runc/crun subcommands that put processes into a container.
_CREATING_SUBCOMMANDS = frozenset({"create", "run", "exec"})
# Global runc/crun flags that take a value (so their value is not a subcommand).
_VALUED_FLAGS = frozenset({"--root", "--log", "--log-format", "--criu", "--rootless"})


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container id (64 hex) and, when the evidence says so, its runtime's name."""

    id: str
    runtime: str | None = None


class RuntimeRole(Enum):
    """What a process image is to the container machinery."""

    NONE = "none"
    SHIM = "shim"  # containerd-shim*: a subreaper; its later children are the container's
    RUNTIME = "runtime"  # runc/crun create|run|exec: sets a container up, is not inside it
    RUNTIME_INIT = "runtime-init"  # "runc init": the first process inside the container


def from_cgroup(text: bytes | str) -> ContainerRef | None:
    """Return the container named by a /proc/PID/cgroup file's text, or None.

    Every line is ``hierarchy:controllers:path`` (v2: ``0::path``). The deepest
    64-hex id of a path wins (docker-in-docker nests ids). A conmon scope means the
    process is the container's monitor, which runs outside it.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found: ContainerRef | None = None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        matches = list(_ID.finditer(path))
        if not matches:
            continue
        last = matches[-1]
        before = path[: last.start()]
        if before.endswith(_NOT_INSIDE):
            return None
        if found is None:
            found = ContainerRef(last.group(1), _runtime_from_path(before))
    return found


def _runtime_from_path(before_id: str) -> str | None:
    segment = before_id[before_id.rfind("/") :] if "/" in before_id else before_id
    for marker, runtime in _RUNTIME_MARKERS:
        if marker.startswith("/"):
            if before_id.endswith(marker):
                return runtime
        elif segment.endswith(marker):
            return runtime
    return None


def _basename(path: str | None) -> str:
    if not path:
        return ""
    return path.rstrip("/").rsplit("/", 1)[-1]


def _runtime_from_bundle(path: str) -> str | None:
    if "/moby/" in path or "/docker/" in path:
        return "docker"
    if "libpod" in path or "overlay-containers" in path:
        return "podman"
    if "crio" in path or "/containers/storage/" in path:
        return "cri-o"
    if "containerd" in path:
        return "containerd"
    return None


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def _shim(args: list[str]) -> ContainerRef | None:
    namespace = _flag_value(args, ("-namespace", "--namespace"))
    if namespace == "k8s.io":
        # One shim per pod: its -id is the sandbox's, not each container's.
        return None
    runtime = "docker" if namespace == "moby" else "containerd"
    shim_id = _flag_value(args, ("-id", "--id"))
    if shim_id is None:
        shim_id = _basename(_flag_value(args, ("-workdir", "--workdir")))
    if shim_id and _ID_EXACT.fullmatch(shim_id):
        return ContainerRef(shim_id, runtime)
    return None


def _runtime_target(args: list[str]) -> ContainerRef | None:
    i = 1
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _VALUED_FLAGS else 1
    if i >= len(args) or args[i] not in _CREATING_SUBCOMMANDS:
        return None
    rest = args[i + 1 :]
    hint = _flag_value(args, ("--log",)) or ""
    bundle = _flag_value(rest, ("--bundle", "-b"))
    if bundle is not None and _ID_EXACT.fullmatch(_basename(bundle)):
        return ContainerRef(_basename(bundle), _runtime_from_bundle(bundle))
    for arg in rest:
        if _ID_EXACT.fullmatch(arg):
            return ContainerRef(arg, _runtime_from_bundle(bundle or hint))
    return None


def classify(
    executable: str | None, args: list[str] | None
) -> tuple[RuntimeRole, ContainerRef | None]:
    """Say what an image is to the container machinery and which container it names."""
    name = _basename(args[0]) if args else ""
    exe_name = _basename(executable)
    if name.startswith("containerd-shim") or exe_name.startswith("containerd-shim"):
        return RuntimeRole.SHIM, _shim(args or [])
    if name in _RUNTIME_BINARIES or exe_name in _RUNTIME_BINARIES:
        if args and len(args) >= 2 and args[1] == "init":
            return RuntimeRole.RUNTIME_INIT, None
        return RuntimeRole.RUNTIME, _runtime_target(args or [])
    return RuntimeRole.NONE, None
