"""The ``auditstream`` command: run, replay, check-config, status, tree."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from auditstream import __version__, logs, privilege, runtime
from auditstream import config as config_mod
from auditstream.stage import write_status
from auditstream.supervisor import RestartPolicy, Supervisor, signal_name

EXIT_EVENTS_DISCARDED = 3  # replay finished, but a sink could not write some events
# Replay finished, but an input file was read only up to a damage (corrupt or truncated
# gzip, a read error): the files after it were read, its rest is lost.
EXIT_INPUT_DAMAGED = 4
# Every output gone (stdout's reader exited: `| head`): stopped early, 128 + SIGPIPE as a
# shell shows for any writer its reader left.
EXIT_OUTPUT_CLOSED = 141
# A replay stopped by a signal before the end of its input exits 128 + the signal's
# number (130 SIGINT, 143 SIGTERM). `run` and `replay --follow` end only so: they exit 0.
EXIT_SIGNAL_BASE = 128
DEFAULT_LIVE_SINK = "jsonl:/var/log/auditstream/events.jsonl"
log = logging.getLogger("auditstream.cli")


def sink_table(arg: str) -> dict[str, Any]:
    """``--sink TYPE:TARGET`` as the TOML table it stands for."""
    if arg in ("-", "stdout"):
        return {"type": "jsonl", "name": "stdout", "path": "-"}
    kind, sep, target = arg.partition(":")
    if not sep or not target:
        raise config_mod.ConfigError(
            f"--sink {arg!r}: expected TYPE:TARGET, e.g. jsonl:events.jsonl"
        )
    if kind in ("jsonl", "file"):
        return {"type": kind, "name": arg, "path": target}
    if kind == "kafka":
        brokers, slash, topic = target.rpartition("/")
        if not slash or not brokers or not topic:
            raise config_mod.ConfigError(f"--sink {arg!r}: expected kafka:BROKER[,BROKER…]/TOPIC")
        return {"type": "kafka", "name": arg, "brokers": brokers, "topic": topic}
    raise config_mod.ConfigError(f"--sink {arg!r}: unknown sink type {kind!r} (jsonl, file, kafka)")


def assembler_count(text: str) -> int:
    """``--assemblers N``, refused by argparse (naming the option) before anything forks."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    allowed = config_mod.INT_RANGES[("assembler", "instances")]
    if not allowed.low <= count <= allowed.high:
        raise argparse.ArgumentTypeError(
            f"must be {allowed.low}..{allowed.high}, as [assembler].instances, got {count}"
        )
    return count


def _load(args: argparse.Namespace) -> config_mod.Config:
    if getattr(args, "config", None):
        return config_mod.load(args.config)
    return config_mod.Config(source_path="<defaults>")


def check_sinks(cfg: config_mod.Config) -> None:
    """Validate sink tables the way the tree keeper will build them."""
    from sinks import SinkError, check_sink, sink_configs_from_tables

    try:
        for sink_cfg in sink_configs_from_tables(cfg.sinks):
            check_sink(sink_cfg)
    except SinkError as err:
        raise config_mod.ConfigError(f"{cfg.source_path}: {err}") from err


def _apply_common(cfg: config_mod.Config, args: argparse.Namespace, *, default_sink: str) -> None:
    if args.sink:
        cfg.sinks = [sink_table(s) for s in args.sink]
    if not cfg.sinks:
        cfg.sinks = [sink_table(default_sink)]
    if args.assemblers is not None:
        cfg.assembler.instances = args.assemblers
    if args.log_json:
        cfg.runtime.log_format = "json"
    config_mod.validate(cfg)
    check_sinks(cfg)
    # The supervisor's own lines (stage pids, restarts) in the stages' format and level.
    logs.setup("cli", fmt=cfg.runtime.log_format, level=cfg.runtime.log_level)


def _print_summary(
    cfg: config_mod.Config, *, restarts: int = 0, stopped: str = ""
) -> tuple[int, int]:
    """Print the summary lines (``stopped``: why the run ended early, said at the end of the
    first); return how many events the sinks discarded and how many inputs were damaged."""
    path = runtime.summary_path(cfg)
    why = f"; {stopped}" if stopped else ""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"auditstream: no summary (the pipeline did not finish){why}", file=sys.stderr)
        return 0, 0
    rec = stats.get("receiver", {})
    asm = stats.get("assembler", {})
    sinks = stats.get("sinks", {})
    events_out = stats.get("treekeeper", {}).get("events_out", asm.get("events", 0))

    def sent_note(sink: dict[str, Any]) -> str:
        # Why a sink's sent differs from the events out, besides what it discarded: the file
        # sink sends only events with raw records (docs/design.md, "The file sink's counts");
        # the others also write the fan-out's drop markers, which are not events out.
        if skipped := sink.get("skipped_events", 0):
            return f" ({skipped} without raw records)"
        markers = sink.get("component_received_events_total", 0) - events_out
        return f" (incl. {markers} drop marker{'s' * (markers != 1)})" if markers > 0 else ""

    sent = ", ".join(
        f"{name} {s.get('component_sent_events_total', 0)}{sent_note(s)}"
        for name, s in sinks.items()
    )
    print(
        f"auditstream: {rec.get('records', 0)} records read, "
        f"{events_out} events out, "
        f"{asm.get('lost_events', 0)} events lost (serial gaps), "
        f"{asm.get('parse_errors', 0)} records failed to parse; sent: {sent or 'none'}{why}",
        file=sys.stderr,
    )
    tk = stats.get("treekeeper", {})
    stats["supervisor"] = {"restarts": restarts}
    try:
        write_status(path, stats)  # summary.json gets the restarts the supervisor counted
    except OSError as err:
        log.warning("cannot add the restart count to %s: %s", path, err)
    print(
        f"auditstream: recovery: {restarts} stage restarts, "
        f"{rec.get('redelivered_batches', 0)} batches redelivered, "
        f"{tk.get('duplicates_dropped', 0)} duplicates dropped, "
        f"{tk.get('gap_markers', 0)} gap markers",
        file=sys.stderr,
    )
    discarded = {
        name: s.get("component_discarded_events_total", 0)
        for name, s in sinks.items()
        if s.get("component_discarded_events_total", 0)
    }
    if discarded:
        print(
            "auditstream: NOT WRITTEN: "
            + ", ".join(
                f"{name} discarded {count} events ({_reasons(sinks[name])})"
                for name, count in discarded.items()
            ),
            file=sys.stderr,
        )
    return sum(discarded.values()), _report_damaged_inputs(rec)


def _reasons(sink: dict[str, Any]) -> str:
    reasons = sink.get("discarded_by_reason") or {}
    return ", ".join(f"{reason} {count}" for reason, count in reasons.items()) or "see the log"


def _privileges(cfg: config_mod.Config) -> privilege.SpawnPrivileges | None:
    """As root: how each stage drops privileges; refuses a `[runtime] user` that cannot run them."""
    plan = privilege.spawn_privileges(cfg)
    if plan is not None and plan.account is not None:
        problems = privilege.stage_account_problems(cfg, plan.account)
        if problems:
            raise config_mod.ConfigError(
                f"{cfg.source_path}: [runtime].user: the stages cannot run as "
                f"{plan.account.user}: " + "; ".join(problems)
            )
    return plan


def _start(
    cfg: config_mod.Config, *, live: bool, receiver_stdin: bool, receiver_fds: tuple[int, ...] = ()
) -> int:
    privileges = _privileges(cfg)
    created = not cfg.runtime.dir
    try:
        run_dir = runtime.make_private_dir(cfg, live=live)
    except runtime.RuntimeDirBusy as err:
        print(f"auditstream: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        where = err.filename or cfg.runtime.dir or runtime.LIVE_DEFAULT_DIR
        print(f"auditstream: runtime dir {where}: {err.strerror}", file=sys.stderr)
        return 1
    if run_dir.left_takeover:  # its run was killed before its stop could say it
        log.warning(
            "left by an earlier run in %s that did not stop cleanly: %s",
            run_dir.path,
            run_dir.left_takeover,
        )
    try:
        return _run_in(
            cfg,
            run_dir.path,
            live=live,
            receiver_stdin=receiver_stdin,
            receiver_fds=receiver_fds,
            privileges=privileges,
            hold_fds=(run_dir.lock_fd,),
        )
    finally:
        os.close(run_dir.lock_fd)
        if created and not live:
            shutil.rmtree(run_dir.path, ignore_errors=True)


def _run_in(
    cfg: config_mod.Config,
    run_dir: Path,
    *,
    live: bool,
    receiver_stdin: bool,
    receiver_fds: tuple[int, ...],
    privileges: privilege.SpawnPrivileges | None,
    hold_fds: tuple[int, ...],
) -> int:
    """Run the pipeline in ``run_dir`` (locked: ours alone) and print its summary."""
    if live and cfg.receiver.source == "netlink" and not cfg.receiver.takeover:
        from receiver.live import audit_pid_refusal

        # Refused before anything starts (sinks opened, files created); the receiver
        # checks again when it registers.
        if refusal := audit_pid_refusal():
            print(f"auditstream: {refusal}", file=sys.stderr)
            return 1
    conf_path = run_dir / "effective-config.json"
    config_mod.write_json(cfg, conf_path)
    supervisor = Supervisor(
        conf_path,
        assemblers=cfg.assembler.instances,
        receiver_stdin=receiver_stdin,
        receiver_fds=receiver_fds,
        # Replay too: a restarted stage gets what it lost again (docs/recovery.md).
        policy=RestartPolicy(enabled=True),
        ready_file=runtime.ready_path(cfg),
        privileges=privileges,
        capturing_file=runtime.status_path(cfg, "receiver") if live else None,
        fork_stages=not live,  # live stages are exec'd: see auditstream/stagefork.py
        output_closed_file=runtime.output_closed_path(cfg),
        hold_fds=hold_fds,
    )
    code = supervisor.run()
    if supervisor.killed_late and not runtime.summary_path(cfg).exists():
        code = code or 1  # killed before the tree keeper could say what it wrote
    # A signal cut the input short (or a second one killed stages): not a whole replay.
    cut = supervisor.interrupted_by is not None and not live and not cfg.receiver.follow
    signum = supervisor.signals[0] if supervisor.signals else None
    stopped = ""
    if supervisor.output_closed:
        stopped = "stopped early: every output is closed"
    elif signum is not None and (cut or supervisor.force_killed):
        stopped = f"interrupted by {signal_name(signum)} before the end of the input"
    discarded = damaged = 0
    if supervisor.stopped_starting:
        print("auditstream: stopped while starting; nothing was read", file=sys.stderr)
    else:
        discarded, damaged = _print_summary(cfg, restarts=supervisor.restarts, stopped=stopped)
    if discarded and code == 0 and not live:
        code = EXIT_EVENTS_DISCARDED  # a replay that did not write everything did not succeed
    if code in (0, EXIT_EVENTS_DISCARDED) and stopped:
        code = EXIT_OUTPUT_CLOSED if supervisor.output_closed else EXIT_SIGNAL_BASE + (signum or 0)
    if damaged and code == 0 and not live:
        code = EXIT_INPUT_DAMAGED
    if live:  # last, where it is seen: we do not start the stopped holder again
        notice = runtime.takeover_notice_in(run_dir)
        try:  # said now, so the next start in this dir does not say it again
            runtime.takeover_path(cfg).unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot remove %s: %s", runtime.takeover_path(cfg), err.strerror or err)
        if notice:
            log.warning("%s", notice)
    return code


def _report_damaged_inputs(receiver: dict[str, Any]) -> int:
    """Name the input files the receiver read only up to a damage; return how many."""
    count = int(receiver.get("damaged_files", 0))
    if count:
        named = ", ".join(
            f"{path} after {lines} lines ({error})"
            for path, error, lines, _bytes in receiver.get("damaged_inputs", [])
        )
        print(
            f"auditstream: NOT READ TO THE END ({count} files): {named or 'see the log'}",
            file=sys.stderr,
        )
    return count


def cmd_replay(args: argparse.Namespace) -> int:
    from receiver.logsource import SourceError, check_position_file, check_readable, inherited_fds

    cfg = _load(args)
    cfg.receiver.source = "file"
    cfg.receiver.files = args.files
    cfg.receiver.follow = args.follow
    cfg.receiver.progress = args.progress
    if args.position_file:
        if not args.follow or len(args.files) != 1 or args.files == ["-"]:
            raise config_mod.ConfigError(
                "--position-file keeps the read position of one followed log: "
                "give --follow and exactly one FILE (not -)"
            )
        cfg.receiver.position_file = args.position_file
    if cfg.receiver.position_file:  # the stages may run elsewhere (exec'd: their own cwd)
        cfg.receiver.position_file = os.path.abspath(cfg.receiver.position_file)
    _apply_common(cfg, args, default_sink="jsonl:-")
    try:
        check_readable(args.files, follow=args.follow)  # followed, the last may come later
        if cfg.receiver.position_file:
            check_position_file(cfg.receiver.position_file)
    except SourceError as err:
        print(f"auditstream: {err}", file=sys.stderr)
        return 2
    # /dev/fd/N (`replay <(zcat a.gz)`) names a descriptor of ours: the receiver keeps it.
    fds = inherited_fds(args.files)
    receiver_stdin = "-" in args.files or 0 in fds
    return _start(
        cfg,
        live=False,
        receiver_stdin=receiver_stdin,
        receiver_fds=tuple(fd for fd in fds if fd > 2),
    )


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.source:
        cfg.receiver.source = args.source
    if args.record:
        cfg.receiver.record = args.record
    if args.takeover:
        cfg.receiver.takeover = True
    _apply_common(cfg, args, default_sink=DEFAULT_LIVE_SINK)
    for table in cfg.sinks:
        if table.get("type") in ("jsonl", "file") and table.get("path") not in (None, "-"):
            directory = Path(table["path"]).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise config_mod.ConfigError(
                    f"sink {table.get('name') or table['path']}: cannot create its directory "
                    f"{directory}: {err.strerror or err}"
                ) from err
    if cfg.receiver.source == "stdin":
        # As auditd's plugin: auditd passes its SIGHUP (reload) on to us. Nothing to reload
        # (the config is read at start); dying of it would restart the pipeline.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return _start(cfg, live=True, receiver_stdin=cfg.receiver.source == "stdin")


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config as `run` would load it: sinks (run's default when none), rules
    files; what `run` would warn about (rules-file lines it ignores) is said the same."""
    cfg = config_mod.load(args.config)
    sinks = f"{len(cfg.sinks)} sink{'s' if len(cfg.sinks) != 1 else ''}"
    if not cfg.sinks:  # as _apply_common: run writes its default sink, replay stdout
        cfg.sinks = [sink_table(DEFAULT_LIVE_SINK)]
        sinks = f"1 sink: run's default {DEFAULT_LIVE_SINK} (replay's: stdout)"
    check_sinks(cfg)
    rules = ""
    warned: list[str] = []
    if cfg.receiver.source == "netlink":  # the rules a live start would load (multicast: none)
        from receiver.logsource import SourceError
        from receiver.rules import load_rule_set

        try:
            loaded = load_rule_set(cfg)
        except SourceError as err:
            raise config_mod.ConfigError(
                f"{cfg.source_path}: [receiver].rules_files: {err}"
            ) from err
        warned = loaded.warnings
        for warning in warned:  # in the log's format: the lines `run` logs, word for word
            log.warning("%s", warning)
        rule_count = len(loaded.rules)
        rules = f", {rule_count} rule{'s' if rule_count != 1 else ''}"
    elif cfg.receiver.source == "file":  # `run` of a config's files: refused as replay would
        from receiver.logsource import SourceError, check_position_file, check_readable

        try:
            check_readable(cfg.receiver.files, follow=cfg.receiver.follow)
        except SourceError as err:
            raise config_mod.ConfigError(f"{cfg.source_path}: [receiver].files: {err}") from err
        if cfg.receiver.position_file:
            try:
                check_position_file(cfg.receiver.position_file)
            except SourceError as err:
                raise config_mod.ConfigError(
                    f"{cfg.source_path}: [receiver].position_file: {err}"
                ) from err
    count = len(warned)
    warnings = f", {count} warning{'s' if count != 1 else ''} above" if count else ""
    print(f"{args.config}: OK ({sinks}, source {cfg.receiver.source}{rules}){warnings}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditstream", description=__doc__)
    parser.add_argument("--version", action="version", version=f"auditstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help="TOML configuration file")
        p.add_argument(
            "--sink",
            action="append",
            metavar="TYPE:TARGET",
            help="jsonl:PATH (- = stdout), file:PATH, kafka:BROKERS/TOPIC; repeatable",
        )
        p.add_argument(
            "--assemblers",
            type=assembler_count,
            help=f"number of assembler processes (1..{config_mod.MAX_ASSEMBLERS})",
        )
        p.add_argument("--log-json", action="store_true", help="log as JSON lines on stderr")

    p = sub.add_parser(
        "replay", help="replay audit.log files (or - for stdin) through the pipeline"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument("--follow", action="store_true", help="keep reading the last file as it grows")
    p.add_argument(
        "--position-file",
        metavar="PATH",
        help="with --follow: keep the log's acknowledged read position in PATH; "
        "a follow started again resumes there",
    )
    common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="capture live from the kernel")
    p.add_argument("--source", help="netlink (default), multicast, stdin, unix:PATH")
    p.add_argument(
        "--record", metavar="PATH", help="also write every raw record to PATH (replayable)"
    )
    p.add_argument("--takeover", action="store_true", help="take the audit PID from its holder")
    common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_check_config)

    for extra in ("status", "tree"):
        try:
            module = __import__(f"auditstream.cmd_{extra}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("cli")
    try:
        return int(args.func(args))
    except config_mod.ConfigError as err:
        print(f"auditstream: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    """The ``auditstream`` command and ``python -m auditstream``: main(), then exit at once.

    A replay's supervisor has imported every stage module (auditstream/stagefork.py), and
    the interpreter's teardown of them took ~15 ms of a 20-line replay's ~0.15 s. Nothing
    is left to release once main() has returned: the stages are reaped, the files closed.
    What is buffered is flushed first; a failed flush (a closed pipe) exits 120, as the
    interpreter's own exit would."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    entry()
