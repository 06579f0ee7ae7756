"""``auditstream tree``: the live process tree of a running ``auditstream run``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from auditstream import runtime
from auditstream.escape import unescape

# What `docker ps` (12), `docker inspect` (64) and `crictl ps` (13) show: hex, any length.
_ID_PREFIX = re.compile(r"[0-9a-f]{1,64}")


def fetch(run_dir: str, timeout_ms: int = 5000) -> list[dict[str, Any]]:
    # Imported here: every `auditstream` command registers this one, and ZeroMQ and the
    # tree keeper's modules cost ~17 ms of each start (a replay's stages wait for it).
    import zmq

    from treekeeper.control import control_endpoint

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(control_endpoint(run_dir))
        sock.send_json({"get": "tree"})
        if not sock.poll(timeout_ms):
            raise TimeoutError(
                f"no answer from the tree keeper in {run_dir} (is `auditstream run` running?)"
            )
        reply = sock.recv_json()
    except zmq.ZMQError as err:
        raise RuntimeError(f"cannot ask the tree keeper in {run_dir}: {err}") from err
    finally:
        sock.close()
        ctx.term()
    if not isinstance(reply, dict) or "processes" not in reply:
        raise RuntimeError(f"unexpected reply: {reply!r}")
    processes: list[dict[str, Any]] = reply["processes"]
    return processes


def _label(proc: dict[str, Any]) -> str:
    args = proc.get("args") or [proc.get("name") or "?"]
    shown = " ".join(unescape(a).decode("utf-8", "replace") for a in args)
    shown = "".join(c if c.isprintable() else "?" for c in shown)  # never drive the terminal
    return f"{proc['pid']} {shown[:120]}"


def render(processes: list[dict[str, Any]], out: Any) -> None:
    """Host tree first, then one tree per container (rooted at its first process)."""
    by_id = {p["entity_id"]: p for p in processes}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for proc in processes:
        parent = proc.get("parent_entity_id")
        children[parent if parent in by_id else None].append(proc)

    def walk(proc: dict[str, Any], depth: int) -> None:
        out.write("  " * depth + _label(proc) + "\n")
        for child in sorted(children.get(proc["entity_id"], []), key=lambda p: p["pid"]):
            if child.get("container_id") == proc.get("container_id"):
                walk(child, depth + 1)

    roots_host = [
        p
        for p in processes
        if not p.get("container_id") and (p.get("parent_entity_id") not in by_id)
    ]
    if roots_host:  # none when one container was asked for
        out.write("host:\n")
    for root in sorted(roots_host, key=lambda p: p["pid"]):
        walk(root, 1)
    containers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for proc in processes:
        if proc.get("container_id"):
            containers[proc["container_id"]].append(proc)
    for cid, procs in sorted(containers.items()):
        out.write(f"container {cid} ({procs[0].get('container_runtime') or '?'}):\n")
        roots = [
            p
            for p in procs
            if by_id.get(p.get("parent_entity_id") or "", {}).get("container_id") != cid
        ]
        for root in sorted(roots, key=lambda p: p["pid"]):
            walk(root, 1)


def container_id_prefix(text: str) -> str:
    """Check a ``--container`` value: a hex id or prefix, any case (docker shows lower)."""
    prefix = text.strip().lower()
    if not _ID_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"--container {text!r}: not a container id (1 to 64 hex digits, as `docker ps` "
            "shows it; container names are not known to the tree keeper)"
        )
    return prefix


def select_container(processes: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """The processes of the one container whose id starts with ``prefix``.

    As docker does with an id prefix: none or several such containers is an error.
    """
    ids = sorted({p["container_id"] for p in processes if p.get("container_id")})
    matching = [cid for cid in ids if cid.startswith(prefix)]
    if not matching:
        raise LookupError(f"no live process of a container whose id starts with {prefix}")
    if len(matching) > 1:
        raise LookupError(f"container id prefix {prefix} is ambiguous: {', '.join(matching)}")
    return [p for p in processes if p.get("container_id") == matching[0]]


def cmd_tree(args: argparse.Namespace) -> int:
    prefix = None
    if args.container is not None:
        try:
            prefix = container_id_prefix(args.container)
        except ValueError as err:
            print(f"auditstream: {err}", file=sys.stderr)
            return 2
    try:
        processes = fetch(str(runtime.stage_dir_of(Path(args.runtime_dir))))
    except (TimeoutError, RuntimeError) as err:
        print(f"auditstream: {err}", file=sys.stderr)
        return 1
    if prefix is not None:
        try:
            processes = select_container(processes, prefix)
        except LookupError as err:
            print(f"auditstream: {err}", file=sys.stderr)
            return 1
    if args.json:
        json.dump(processes, sys.stdout)
        print()
    else:
        render(processes, sys.stdout)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tree", help="print the live process tree of a running `auditstream run`")
    p.add_argument("--json", action="store_true", help="one JSON array of processes")
    p.add_argument(
        "--container",
        metavar="ID",
        help="only this container: its id or a unique prefix (12 hex, as `docker ps` shows)",
    )
    p.add_argument("--runtime-dir", default=runtime.LIVE_DEFAULT_DIR)
    p.set_defaults(func=cmd_tree)
