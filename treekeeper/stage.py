"""The tree keeper process: enrich events with the process tree and fan them out to the sinks."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from auditstream import runtime, wire
from auditstream.config import Config
from auditstream.stage import StageContext, merge_stats, write_status
from treekeeper.control import ControlServer
from treekeeper.pipeline import TreeStep, build_fanout, fanout_stats

log = logging.getLogger("auditstream.treekeeper")
IDLE_POLL_MS = 100
STATUS_EVERY_S = 1.0


def run(cfg: Config, ctx: StageContext) -> int:
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inlet = wire.Inlet(zctx, runtime.treekeeper_endpoint(cfg), hwm=cfg.runtime.hwm_messages)
    try:
        fanout = build_fanout(cfg)
    except Exception as err:
        log.error("cannot start sinks: %s", err)
        inlet.close()
        zctx.term()
        return 2
    step = TreeStep(cfg)
    runtime.ready_path(cfg).touch(mode=0o600)
    control = ControlServer(zctx, cfg.runtime.dir)
    sent = 0

    def submit(batch: list[dict[str, Any]]) -> None:
        nonlocal sent
        if batch:
            sent += len(batch)
            fanout.submit(batch)

    eofs_expected = cfg.assembler.instances
    upstream: dict[str, Any] = {}
    received = 0
    last_status = 0.0
    while eofs_expected > 0:
        frame = inlet.recv(IDLE_POLL_MS)
        now = time.monotonic()
        if frame is None:
            submit(step.maintain())
            if ctx.should_stop_when_idle(now):
                break  # told to stop, and upstream has gone quiet: no eof is coming
        elif frame.kind == wire.EVENTS:
            ctx.input_arrived()
            events = frame.body["events"]
            received += len(events)
            submit(step.process(events))
        elif frame.kind == wire.EOF_KIND:
            merge_stats(upstream, frame.body.get("stats", {}))
            eofs_expected -= 1
        control.serve(step.table)
        if now - last_status >= STATUS_EVERY_S:
            last_status = now
            write_status(
                runtime.status_path(cfg, "treekeeper"),
                {"received_events": received, "sinks": fanout_stats(fanout)},
            )
    submit(step.close())
    fanout.close()
    stats = {
        "treekeeper": {
            "received_events": received,
            "events_out": sent,
            "frame_gaps": inlet.stats.gaps,
            **step.stats(),
        },
        "sinks": fanout_stats(fanout),
    }
    merge_stats(upstream, stats)
    write_status(runtime.summary_path(cfg), upstream)
    runtime.ready_path(cfg).unlink(missing_ok=True)
    control.close()
    inlet.close()
    zctx.term()
    return 0
