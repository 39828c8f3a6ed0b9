"""A comux worker in a process of its own, for tests/integration/test_scale_out.py.

``python -m tests.worker --bootstrap HOST:PORT --group G --cams a,b,c [--instance-id X]
[--start committed] [--policy fifo|latest] [--model-delay S] [--hold-seconds S] [--option k=v]
[--transactional-id T] [--send-then-hold]``

It builds a Comux, consumes, and calls ``get_batch(stacked=True)`` in a loop like a model would,
sending ``{"worker": X}`` for every valid frame. It talks to the parent through JSON lines on
stdout, each with ``t`` (``time.time()``):

- ``{"event": "ready"}`` once started; ``{"event": "first_frame", "cam", "offset"}`` once;
- ``{"event": "assignment", "cams": [...]}`` whenever the set of cameras whose partition this
  process holds changes; ``{"event": "cam_first", "cam", "offset"}`` for the first frame of a
  camera after it was (re)assigned;
- ``{"event": "batch", "cams": [...], "offsets": {cam: offset}, "slots": [...]}`` (valid frames
  only; ``slots``: the batch's cam_ids, valid or not), at most
  four a second, and for every batch that was held; ``{"event": "committed", "offsets"}`` with
  them when what this process committed (``stats()[cam]["committed"]``) changed;
- SIGUSR1 asks it to hold the next batch with a valid frame for ``--hold-seconds`` before sending
  its results (a model that is slow once; after sending them with ``--send-then-hold``):
  ``{"event": "holding", "offsets"}`` when the hold starts, ``{"event": "sent", "offsets",
  "revoked_in_hand": [...]}`` once its results were sent and the hold is over
  (``revoked_in_hand``: cameras of that batch whose partition left this process meanwhile);
- ``{"event": "error", "where", "error"}`` for an exception in ``send`` or ``get_batch``;
- SIGTERM: the batch in hand is finished (sent and acked), the Comux closed, and
  ``{"event": "closed", "undelivered", "stats"}`` printed; exit status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from comux import Comux

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": time.time(), **fields}, default=str)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option needs key=value, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.worker")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--cams", required=True, help="comma-separated camera ids")
    p.add_argument("--instance-id", default=None)
    p.add_argument("--name", default=None, help="the worker header (default: instance id, pid)")
    p.add_argument("--start", default="committed", choices=("end", "earliest", "committed"))
    p.add_argument(
        "--fallback", default="end", choices=("end", "earliest"), help="with no commit yet"
    )
    p.add_argument("--policy", default=None, choices=("fifo", "latest"))
    p.add_argument("--model-delay", type=float, default=0.0, help="seconds per batch")
    p.add_argument("--hold-seconds", type=float, default=5.0, help="a batch held on SIGUSR1")
    p.add_argument("--consume", default="raw.:cam_id", help="input topic template")
    p.add_argument("--produce", default="out.:cam_id", help="output topic template")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=90)
    p.add_argument("--max-wait", type=float, default=0.2)
    p.add_argument("--commit-interval", type=float, default=1.0)
    p.add_argument("--decode-threads", type=int, default=1)
    p.add_argument("--transactional-id", default=None, help="exactly-once results")
    p.add_argument(
        "--send-then-hold", action="store_true", help="the held batch's results go out first"
    )
    p.add_argument("--option", type=_option, action="append", default=[], help="librdkafka k=v")
    return p.parse_args(argv)


class Assignment:
    """Which cameras' partitions this process holds now (``Comux.assigned``), watched."""

    def __init__(self, cameras: Comux) -> None:
        self.cameras = cameras
        self.lock = threading.Lock()
        self.held: frozenset[str] = frozenset()
        # Cameras with a frame handed out since they were (re)assigned. Kept from the model
        # loop's side: a frame can reach a batch before this thread sees the assignment.
        self.handed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-assignment", daemon=True)

    def now(self) -> frozenset[str]:
        return self.cameras.assigned

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            held = self.now()
            with self.lock:
                if held == self.held:
                    continue
                gained = held - self.held
                self.handed -= self.held - held
                self.held = held
            emit("assignment", cams=sorted(held), gained=sorted(gained))

    def first_frames(self, cam_ids: list[str]) -> list[str]:
        """The cameras of a batch whose first frame since their assignment this is."""
        held = self.now()  # read after the batch: each of its cameras was assigned by then
        with self.lock:
            self.handed &= held
            first = [c for c in cam_ids if c not in self.handed]
            self.handed.update(first)
            return first


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    name = args.name or args.instance_id or f"pid{os.getpid()}"
    cam_ids = [c for c in args.cams.split(",") if c]
    stop = threading.Event()
    hold_next = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: hold_next.set())

    cameras = Comux(
        cam_ids, args.consume, args.produce, "WARNING", decode_threads=args.decode_threads
    )
    cameras.setup_consumers(
        args.bootstrap,
        end=args.fallback == "end",
        max_offset_diff=None,  # never jump: these tests count every offset
        start=args.start,
        group_id=args.group,
        instance_id=args.instance_id,
        commit_interval=args.commit_interval,
        **dict(args.option),
    )
    cameras.setup_decoders(
        rate=None, W=args.width, H=args.height, policy=args.policy, max_wait=args.max_wait
    )
    cameras.setup_producer(args.bootstrap, transactional_id=args.transactional_id)
    assignment = Assignment(cameras)
    cameras.start()
    assignment.start()
    emit("ready", pid=os.getpid(), name=name)

    frames: dict[str, int] = dict.fromkeys(cam_ids, 0)
    errors = 0
    first = True
    last_print = 0.0
    last_committed: dict[str, Any] = {}
    batch = None
    while not stop.is_set():
        try:
            batch = cameras.get_batch(timeout=0.5, stacked=True)
        except Exception as exc:  # reported; the parent's assertions decide
            errors += 1
            emit("error", where="get_batch", error=repr(exc))
            stop.wait(0.1)
            continue
        if batch is None:
            continue
        now = time.time()
        valid = [
            (c, int(i))
            for c, i, v in zip(batch.cam_ids, batch.indices, batch.valid, strict=True)
            if v
        ]
        if not valid:
            batch.release()
            continue
        offsets = dict(valid)
        if first:
            first = False
            emit("first_frame", cam=valid[0][0], offset=valid[0][1])
        for cam_id in assignment.first_frames(list(offsets)):
            emit("cam_first", cam=cam_id, offset=offsets[cam_id])
        held = hold_next.is_set()
        if held or now - last_print >= 0.25:
            last_print = now
            emit("batch", cams=sorted(offsets), offsets=offsets, slots=list(batch.cam_ids))
            committed = {c: s.get("committed") for c, s in cameras.stats().items()}
            if committed != last_committed:
                last_committed = committed
                emit("committed", offsets=committed)
        if held:
            hold_next.clear()
            emit("holding", offsets=offsets, seconds=args.hold_seconds)
            if not args.send_then_hold:
                stop.wait(args.hold_seconds)  # the model, slow this once
        elif args.model_delay:
            stop.wait(args.model_delay)  # the model's compute time
        revoked = sorted(c for c in offsets if c not in assignment.now())
        for cam_id, offset in valid:
            try:
                cameras.send(cam_id, offset, {"worker": name})
                frames[cam_id] += 1
            except Exception as exc:
                errors += 1
                emit("error", where="send", cam=cam_id, offset=offset, error=repr(exc))
        if held and args.send_then_hold:
            stop.wait(args.hold_seconds)  # results out, the model still busy with the batch
            revoked = sorted(c for c in offsets if c not in assignment.now())
        if held:
            emit("sent", offsets=offsets, revoked_in_hand=revoked)
        batch.release()
    if batch is not None:
        batch.ack()  # its results were sent: done, so the last commit covers it
    assignment.stop()
    undelivered = cameras.close(timeout=10)
    stats = cameras.stats()  # after the last commit
    emit(
        "closed",
        undelivered=undelivered,
        errors=errors,
        frames=frames,
        committed={c: s.get("committed") for c, s in stats.items()},
        untracked_sends={c: s.get("untracked_sends") for c, s in stats.items()},
        revoked_sends={c: s.get("revoked_sends") for c, s in stats.items()},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
