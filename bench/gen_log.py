"""Write a large, exec-heavy audit.log for benchmarks: process churn with realistic records.

Each simulated process is cloned by its parent, execs a program, opens files and
exits, so every stage (grouping, interpretation, the process tree) does real
work. Events of neighbouring processes interleave as they do on a busy host.

    python bench/gen_log.py --lines 500000 --out /tmp/exec-heavy.log [--enriched]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

PROGRAMS = [
    ("/usr/bin/ls", ["ls", "-la", "/var/log"]),
    ("/usr/bin/cat", ["cat", "/etc/hostname"]),
    ("/usr/bin/grep", ["grep", "-r", "needle", "/srv/data"]),
    ("/usr/bin/python3.11", ["python3", "-c", "print('hello world')"]),
    ("/usr/bin/rm", ["rm", "-f", "/tmp/x y z"]),
]
FILES = ["/etc/ld.so.cache", "/lib/x86_64-linux-gnu/libc.so.6", "/etc/passwd", "/var/log/syslog"]


def hexs(text: str) -> str:
    return text.encode().hex().upper()


def untrusted(text: str) -> str:
    """Quote or hex-encode a value the way the kernel's audit_log_untrustedstring does."""
    if any(c in text for c in ' "') or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        return hexs(text)
    return f'"{text}"'


class Writer:
    def __init__(self, out: list[str], enriched: bool) -> None:
        self.out = out
        self.enriched = enriched
        self.serial = 1000
        self.ms = 1_790_000_000_000

    def event(self, records: list[tuple[str, str]]) -> list[str]:
        self.serial += 1
        self.ms += random.randint(0, 3)
        stamp = f"audit({self.ms // 1000}.{self.ms % 1000:03d}:{self.serial})"
        lines = []
        for rtype, body in records:
            trailer = ""
            if self.enriched and rtype == "SYSCALL":
                trailer = '\x1dARCH=x86_64 SYSCALL=x AUID="user" UID="root" GID="root"'
            lines.append(f"type={rtype} msg={stamp}: {body}{trailer}\n")
        lines.append(f"type=EOE msg={stamp}: \n")
        return lines


def syscall(
    nr: int, exit_: int, pid: int, ppid: int, comm: str, exe: str, items: int, a0: str = "0"
) -> str:
    return (
        f"arch=c000003e syscall={nr} success=yes exit={exit_} a0={a0} a1=7ffd2a4c a2=0 a3=0 items={items} "
        f"ppid={ppid} pid={pid} auid=1000 uid=1000 gid=1000 euid=1000 suid=1000 fsuid=1000 egid=1000 "
        f'sgid=1000 fsgid=1000 tty=pts0 ses=3 comm="{comm}" exe="{exe}" subj=unconfined key="auditstream-proc"'
    )


def path(item: int, name: str) -> str:
    return (
        f'item={item} name="{name}" inode={random.randint(1000, 999999)} dev=fd:01 mode=0100755 ouid=0 '
        "ogid=0 rdev=00:00 nametype=NORMAL cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0"
    )


def process_events(w: Writer, pid: int, shell_pid: int) -> list[list[str]]:
    exe, argv = random.choice(PROGRAMS)
    comm = argv[0][:15]
    title = "\x00".join(argv)
    events = [
        w.event(
            [
                (
                    "SYSCALL",
                    syscall(56, pid, shell_pid, 1, "bash", "/usr/bin/bash", 0, a0="1200011"),
                ),
                ("PROCTITLE", "proctitle=2D62617368"),
            ]
        ),
        w.event(
            [
                ("SYSCALL", syscall(59, 0, pid, shell_pid, comm, exe, 2)),
                (
                    "EXECVE",
                    f"argc={len(argv)} "
                    + " ".join(f"a{i}={untrusted(a)}" for i, a in enumerate(argv)),
                ),
                ("CWD", 'cwd="/home/user"'),
                ("PATH", path(0, exe)),
                ("PATH", path(1, "/lib64/ld-linux-x86-64.so.2")),
                ("PROCTITLE", f"proctitle={hexs(title)}"),
            ]
        ),
    ]
    for name in random.sample(FILES, 2):
        events.append(
            w.event(
                [
                    ("SYSCALL", syscall(257, 3, pid, shell_pid, comm, exe, 1, a0="ffffff9c")),
                    ("CWD", 'cwd="/home/user"'),
                    ("PATH", path(0, name)),
                    ("PROCTITLE", f"proctitle={hexs(title)}"),
                ]
            )
        )
    events.append(
        w.event(
            [
                (
                    "SYSCALL",
                    syscall(231, 0, pid, shell_pid, comm, exe, 0).replace(
                        " success=yes exit=0", ""
                    ),
                ),
                ("PROCTITLE", f"proctitle={hexs(title)}"),
            ]
        )
    )
    return events


def generate(lines: int, enriched: bool, seed: int = 7) -> list[str]:
    random.seed(seed)
    out: list[str] = []
    w = Writer(out, enriched)
    pid = 20000
    pending: list[list[str]] = []
    while len(out) < lines:
        pid = pid + 1 if pid < 4_000_000 else 20000
        pending.extend(process_events(w, pid, 1999))
        # Interleave two neighbouring events record by record now and then.
        while len(pending) >= 2:
            a, b = pending.pop(0), pending.pop(0)
            if random.random() < 0.2:
                merged = [x for pair in zip(a, b, strict=False) for x in pair]
                merged += a[len(b) :] + b[len(a) :]
                out.extend(merged)
            else:
                out.extend(a + b)
    out.extend(x for ev in pending for x in ev)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--enriched", action="store_true")
    args = parser.parse_args()
    args.out.write_text("".join(generate(args.lines, args.enriched)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
