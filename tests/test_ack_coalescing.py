"""The tree keeper's acknowledgements, coalesced while frames keep coming (treekeeper/acks.py):
each ack wakes a thread in the tree keeper and two in the receiver, so an assembler's newest
one waits up to ACK_EVERY_S, unless it frees an eighth of the replay buffer or ends an eof."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from auditstream import wire
from auditstream.config import Config
from auditstream.redelivery import acks_endpoint
from treekeeper import acks as acks_mod
from treekeeper.acks import AckSender


@pytest.fixture
def hop(tmp_path: Path) -> Iterator[tuple[AckSender, wire.Inlet]]:
    """A tree keeper's AckSender and a receiver's end of the ack hop, the hello heard."""
    cfg = Config()
    cfg.runtime.dir = str(tmp_path)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sender = AckSender(ctx, cfg)
    receiver = wire.Inlet(ctx, acks_endpoint(cfg), connect=True)
    deadline = time.monotonic() + 10
    while sender.hello_due and time.monotonic() < deadline:
        time.sleep(0.005)
        sender.service(0)
    hello = receiver.recv(10_000)
    assert hello is not None and hello.kind == wire.HELLO
    yield sender, receiver
    receiver.close()
    sender.close(linger_ms=0)
    ctx.term()


def frame_done(sender: AckSender, durable_below: int, *, final: bool = False) -> None:
    """An events (or eof) frame of assembler 0 with nothing left to wait for."""
    body = {"epoch": 1, "durable_below": durable_below, "token": sender.token}
    sender.tracker.frame_arrived(0, body, [], submitted=0, final=final)


def acks_heard(receiver: wire.Inlet) -> list[int]:
    """The durable_below of the acks that reach the receiver's end now (at least one)."""
    frame = receiver.recv(10_000)
    heard = []
    while frame is not None:
        assert frame.kind == wire.ACK
        heard.append(frame.body["durable_below"])
        frame = receiver.recv(100)
    return heard


def test_an_ack_waits_while_frames_come_but_an_eof_or_the_last_goes_at_once(
    hop: tuple[AckSender, wire.Inlet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an ack, the next waits (ACK_EVERY_S); an eof's ack and the final service send it."""
    sender, receiver = hop
    monkeypatch.setattr(acks_mod, "ACK_EVERY_S", 3600.0)
    frame_done(sender, 1)
    sender.service(0)
    assert acks_heard(receiver) == [1]  # the first ack goes at once
    frame_done(sender, 2)
    sender.service(0)
    assert sender.acks_sent == 1  # held: the next may come with a later frame's
    frame_done(sender, 3, final=True)
    sender.service(0)
    assert acks_heard(receiver) == [3]  # an eof: the receiver waits for it to end
    frame_done(sender, 4)
    sender.service(0)
    assert sender.acks_sent == 2
    sender.service(0, now_all=True)
    assert acks_heard(receiver) == [4]


def test_an_ack_that_frees_an_eighth_of_the_replay_buffer_goes_at_once(
    hop: tuple[AckSender, wire.Inlet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However recent the last ack, one that frees an eighth of the receiver's buffer goes."""
    sender, receiver = hop
    monkeypatch.setattr(acks_mod, "ACK_EVERY_S", 3600.0)
    eighth = sender._batches_per_ack
    frame_done(sender, 1)
    sender.service(0)
    assert acks_heard(receiver) == [1]
    frame_done(sender, eighth)  # frees one batch less than an eighth
    sender.service(0)
    assert sender.acks_sent == 1
    frame_done(sender, 1 + eighth)
    sender.service(0)
    assert acks_heard(receiver) == [1 + eighth]


def test_a_held_ack_goes_when_frames_stop_coming(
    hop: tuple[AckSender, wire.Inlet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack held back goes on a later idle service, without any further frame."""
    sender, receiver = hop
    monkeypatch.setattr(acks_mod, "ACK_EVERY_S", 0.05)
    frame_done(sender, 1)
    sender.service(0)
    frame_done(sender, 2)
    sender.service(0)  # most likely held (within 50 ms of the first)
    deadline = time.monotonic() + 10
    while sender.acks_sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
        sender.service(0)  # the tree keeper's idle turns, every IDLE_POLL_MS
    assert acks_heard(receiver) == [1, 2]
