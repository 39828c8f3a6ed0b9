"""Scaling out: several worker processes in one consumer group, killed and restarted.

Each test runs real worker processes (``python -m tests.worker``) against the session's broker,
with its own topics and group, and checks what "nothing lost" means for a group that commits
only what was delivered:

- every input offset from a camera's first result (a keyframe: what came before it is
  explained, decoding starts at a keyframe) up to the commit's done point (its metadata; the
  offset itself is that GOP's keyframe) has its result on the output topic: a commit never
  passes an undelivered result;
- copies of one result (results delivered after the last commit are produced again) carry
  identical provenance: the same packet, original headers and comux-source-* headers;
- a worker that takes cameras over hands out frames from the commit's done point on, so there
  is no gap between the last result of the worker that had them and its own first.

The tests: (a) two workers split eight live cameras 4 + 4, one is killed with -9 and the
survivor takes its cameras over within the session timeout; (b) a worker killed between
producing results and committing them, restarted from the commit; (c) a static member
(instance id) replaced at once, and how long until its first frame; (d) a rebalance while the
model holds a batch; (e) a model slower than max.poll.interval.ms keeps its membership; (f) a
worker added before the first one committed anything: the cameras move without a gap.

Cameras: 160x90 at 10 fps, a keyframe every 10 frames, no B-frames (one frame per offset).
Every test prints what it measured (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet_helpers import poll_until, wait_until
from tests.scale_helpers import (
    GOP,
    LivePublisher,
    Out,
    Scenario,
    WorkerProc,
    conflicting,
    describe_runs,
    duplicates,
    is_keyframe,
    missing,
    publish_backlog,
)

SESSION_TIMEOUT_S = 6.0  # comux's default session.timeout.ms
SLACK_S = 5.0  # rebalance after the session timed out, fetch from the commit, first decode
# A killed worker's last commit: the group's commits read unchanged this long have landed.
STILL_S = 0.5


class Procs:
    """What a test started: cleaned up whatever happens."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[WorkerProc] = []
        self.publishers: list[LivePublisher] = []

    def worker(self, scenario: Scenario, **options: Any) -> WorkerProc:
        worker = scenario.worker(log_dir=self.log_dir, **options)
        self.workers.append(worker)
        return worker

    def publisher(self, scenario: Scenario) -> LivePublisher:
        pub = LivePublisher(scenario)
        self.publishers.append(pub)
        return pub


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    box = Procs(tmp_path)
    try:
        yield box
    finally:
        for worker in box.workers:
            worker.cleanup()
        for pub in box.publishers:
            with contextlib.suppress(AssertionError):
                pub.stop()


# -- shared checks -------------------------------------------------------------------------------


def wait_committed(scenario: Scenario, cams: list[str], timeout: float = 20.0) -> dict[str, int]:
    """Until the group has a commit for every one of ``cams``."""
    box: dict[str, int] = {}

    def ready() -> bool:
        box.update(scenario.committed(cams))
        return all(box[c] >= 0 for c in cams)

    wait_until(ready, timeout, lambda: f"no commit for some of {cams}: {box}", interval=0.3)
    return box


def last_committed(worker: WorkerProc) -> dict[str, int]:
    """What ``worker`` last reported committed (its ``committed`` events; {} before one)."""
    done = worker.of("committed")
    if not done:
        return {}
    return {c: o for c, o in done[-1]["offsets"].items() if o is not None}


def wait_commits_landed(
    scenario: Scenario, dead: WorkerProc, cams: list[str], timeout: float = 15.0
) -> dict[str, int]:
    """The group's commits of ``cams`` once ``dead`` (killed) can change them no more: a commit
    it sent just before it died has landed. At least what it last reported committed, and
    unchanged over reads spanning STILL_S."""
    floor = last_committed(dead)
    seen: dict[str, Any] = {"value": None, "since": 0.0}

    def landed() -> dict[str, int] | None:
        now = time.monotonic()
        got = scenario.committed(cams)
        if got != seen["value"]:
            seen.update(value=got, since=now)
        if all(got[c] >= floor.get(c, -1) for c in cams) and now - seen["since"] >= STILL_S:
            return got
        return None

    return wait_until(
        landed,
        timeout,
        lambda: f"commits {seen['value']} not settled; {dead.name} last reported {floor}",
        interval=0.1,
    )


def wait_worker_committed(
    worker: WorkerProc, past: dict[str, int], timeout: float = 20.0
) -> dict[str, int]:
    """Until ``worker`` reports a commit past ``past[cam]`` for every camera of ``past``."""

    def done() -> dict[str, int] | None:
        got = last_committed(worker)
        return got if all(got.get(c, -1) > o for c, o in past.items()) else None

    return wait_until(
        done,
        timeout,
        lambda: (
            f"{worker.name} committed {last_committed(worker)}, not past {past}; "
            f"stderr: {worker.stderr_tail()}"
        ),
        interval=0.1,
    )


def first_offsets(worker: WorkerProc) -> dict[str, int]:
    """The offset of each camera's first frame at ``worker`` (its first ``cam_first``)."""
    out: dict[str, int] = {}
    for e in worker.of("cam_first"):
        out.setdefault(e["cam"], e["offset"])
    return out


def wait_frames(worker: WorkerProc, cams: list[str], timeout: float = 30.0) -> None:
    wait_until(
        lambda: set(cams) <= {e["cam"] for e in worker.of("cam_first")},
        timeout,
        lambda: (
            f"{worker.name} has frames of {sorted(e['cam'] for e in worker.of('cam_first'))}, "
            f"not all of {cams}; stderr: {worker.stderr_tail()}"
        ),
    )


def check_nothing_lost(
    scenario: Scenario, results: dict[str, dict[int, list[Out]]], committed: dict[str, int]
) -> dict[str, Any]:
    """Every offset from each camera's first result to its commit has a result; copies agree."""
    problems = []
    dups = 0
    for cam in scenario.cams:
        got = results[cam]
        if not got:
            problems.append(f"{cam}: no result at all")
            continue
        first = min(got)
        if not is_keyframe(first):
            problems.append(f"{cam}: first result at {first}, not a keyframe")
        end = committed[cam]
        if end < first:
            problems.append(f"{cam}: committed {end} is before the first result {first}")
        gap = missing(got, first, end)
        if gap:
            problems.append(f"{cam}: no result for {describe_runs(gap)} below committed {end}")
        bad = conflicting(got)
        if bad:
            problems.append(f"{cam}: copies differ in provenance at {describe_runs(bad)}")
        dups += len(duplicates(got))
    assert not problems, "results lost:\n" + "\n".join(problems)
    return {"duplicates": dups}


def check_committed_covered(
    results: dict[str, dict[int, list[Out]]], committed: dict[str, int], when: str
) -> None:
    """A commit never passes an undelivered result: below it, every offset has its result."""
    problems = []
    for cam, end in committed.items():
        got = results[cam]
        first = min(got) if got else end
        gap = missing(got, first, end)
        if gap:
            problems.append(f"{cam}: committed {end}, but no result for {describe_runs(gap)}")
    assert not problems, f"committed past undelivered results ({when}):\n" + "\n".join(problems)


def timeline(t0: float, *workers: WorkerProc, commits: bool = False) -> str:
    """The workers' assignments and first frames (and commits), in seconds from ``t0``."""
    rows = []
    kinds = ["assignment", "cam_first", "holding", "sent"] + (["committed"] if commits else [])
    for w in workers:
        for e in [e for kind in kinds for e in w.of(kind)]:
            what = {
                "assignment": lambda e: f"holds {e['cams']}",
                "cam_first": lambda e: f"first {e['cam']}@{e['offset']}",
                "holding": lambda e: f"holds batch {e['offsets']}",
                "sent": lambda e: f"sent, revoked in hand {e['revoked_in_hand']}",
                "committed": lambda e: f"committed {e['offsets']}",
            }[e["event"]](e)
            rows.append((e["t"], f"{e['t'] - t0:+.2f} {w.name} {what}"))
    return "; ".join(text for _, text in sorted(rows))


def worker_results(
    results: dict[int, list[Out]], name: str, after: set[tuple[str, int]] | None = None
) -> list[int]:
    """Input offsets ``name`` has results for (only those not in ``after``: (topic, offset))."""
    return sorted(
        o
        for o, copies in results.items()
        if any(
            c.worker == name and (after is None or (c.topic, c.offset) not in after) for c in copies
        )
    )


def check_handover(
    results: dict[str, dict[int, list[Out]]],
    cams: list[str],
    old: str,
    new: str,
    committed_at_kill: dict[str, int],
    max_duplicates: int,
    at_kill: set[tuple[str, int]] | None = None,
) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """The new worker's first result of each camera is the commit the old one left, and it is
    at most one past the old one's last result (no gap); overlap at most ``max_duplicates``.
    ``at_kill``: the output records (topic, offset) there were at the kill, not the new one's."""
    spans = {}
    problems = []
    for cam in cams:
        before = worker_results(results[cam], old)
        after = worker_results(results[cam], new, at_kill)
        if not before or not after:
            problems.append(f"{cam}: {old} has {len(before)} results, {new} {len(after)}")
            continue
        last_old, first_new = before[-1], after[0]
        spans[cam] = (last_old, first_new)
        if first_new != committed_at_kill[cam]:
            problems.append(
                f"{cam}: {new} started at {first_new}, the commit was {committed_at_kill[cam]}"
            )
        if first_new > last_old + 1:
            problems.append(f"{cam}: gap {last_old + 1}..{first_new - 1} between {old} and {new}")
        if last_old + 1 - first_new > max_duplicates:
            problems.append(
                f"{cam}: {last_old + 1 - first_new} duplicates ({first_new}..{last_old}), "
                f"more than {max_duplicates}"
            )
    return spans, problems


# -- a) two workers share eight cameras; one is killed -------------------------------------------


def test_two_workers_split_and_survivor_takes_over(kafka_broker, procs: Procs) -> None:
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(8)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    # a1 runs alone first (all 8 cameras, committing); a2 is added: the group splits them.
    w1 = procs.worker(sc, name="a1")
    wait_frames(w1, sc.cams)
    wait_committed(sc, sc.cams)
    w2 = procs.worker(sc, name="a2")

    def split() -> tuple[set[str], set[str]] | None:
        since = time.time() - 2.0
        a, b = w1.cams_since(since), w2.cams_since(since)
        held = [w.of("assignment")[-1]["cams"] if w.of("assignment") else [] for w in (w1, w2)]
        if a and b and a | b == set(sc.cams) and not a & b and [sorted(a), sorted(b)] == held:
            return a, b
        return None

    t0 = time.time()
    got = wait_until(
        split,
        40,
        lambda: (
            f"no 4 + 4 split: a1 {sorted(w1.cams_since(time.time() - 2))}, "
            f"a2 {sorted(w2.cams_since(time.time() - 2))}"
        ),
    )
    assert got is not None
    cams1, cams2 = got
    settled = time.time() - t0
    assert (len(cams1), len(cams2)) == (4, 4), f"split {sorted(cams1)} + {sorted(cams2)}"
    # Both were given all eight ids: a camera the other worker reads takes no slot.
    t_split = time.time()
    for w, cams in ((w1, cams1), (w2, cams2)):
        last = wait_until(
            lambda w=w: w.of("batch", since=t_split), 10, lambda: "no batch", interval=0.1
        )
        assert set(last[-1]["slots"]) == cams, f"{w.name}'s batch slots {last[-1]['slots']}"
    dead = sorted(cams2)

    def own_commits() -> bool:  # a2 committed its cameras itself (not only a1 before the split)
        done = w2.of("committed")
        return bool(done) and all(done[-1]["offsets"].get(c, -1) >= 0 for c in dead)

    wait_until(own_commits, 20, lambda: f"a2 committed {w2.of('committed')[-1:]}")

    t_kill = w2.kill9()
    at_kill = wait_commits_landed(sc, w2, dead)
    records = sc.outputs()
    snapshot = sc.results(records)
    check_committed_covered({c: snapshot[c] for c in dead}, at_kill, "a2 killed")

    def taken_over() -> bool:
        return set(dead) <= {e["cam"] for e in w1.of("cam_first", since=t_kill)}

    wait_until(taken_over, SESSION_TIMEOUT_S + 20, lambda: f"a1 took {w1.of('assignment')[-1:]}")
    firsts = {e["cam"]: e for e in w1.of("cam_first", since=t_kill)}
    survivor_s = max(firsts[c]["t"] for c in dead) - t_kill
    assigned = [e for e in w1.of("assignment", since=t_kill) if set(dead) <= set(e["cams"])]
    assigned_s = assigned[0]["t"] - t_kill if assigned else float("nan")
    t_taken = max(firsts[c]["t"] for c in dead)

    def after_takeover() -> set[str]:
        """Cameras in the batches a1 reported after the one that completed the takeover."""
        return {c for e in w1.of("batch", since=t_taken)[1:] for c in e["cams"]}

    poll_until(lambda: after_takeover() == set(sc.cams), 15, interval=0.1)
    all8 = after_takeover()
    closed = w1.terminate()
    pub.stop()

    final = sc.committed()
    results = sc.results()
    lost = check_nothing_lost(sc, results, final)
    spans, handover = check_handover(
        results, dead, "a2", "a1", at_kill, 3 * GOP, {(r.topic, r.offset) for r in records}
    )
    print(
        f"\n[scale a] split 4+4 after {settled:.1f} s (a1 {sorted(cams1)}, a2 {dead}); "
        f"a2 killed: a1 assigned its cameras after {assigned_s:.1f} s, frames of all 8 after "
        f"{survivor_s:.1f} s (limit {SESSION_TIMEOUT_S + SLACK_S:g}); committed at kill {at_kill}; "
        f"(last a2, first a1) {spans}; duplicates {lost['duplicates']}; "
        f"a1 undelivered {closed['undelivered']}"
    )
    assert not handover, (
        "handover a2 -> a1:\n"
        + "\n".join(handover)
        + f"\ntimeline from the kill: {timeline(t_kill, w2, w1, commits=True)}"
        + f"\na2's log: {w2.stderr_tail(1500)}"
    )
    assert all8 == set(sc.cams), f"a1's batches after the takeover hold {sorted(all8)}"
    assert survivor_s < SESSION_TIMEOUT_S + SLACK_S, (
        f"the survivor had frames of all 8 cameras {survivor_s:.1f} s after the kill"
    )
    assert not w1.errors() and closed["undelivered"] == 0, (w1.errors()[:3], closed)


# -- b) killed between produce and commit, restarted from the commit -----------------------------


def test_kill_between_produce_and_commit_then_restart(kafka_broker, procs: Procs) -> None:
    frames = 300
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    publish_backlog(sc, frames)
    options = {"fallback": "earliest", "model_delay": 0.02}
    w1 = procs.worker(sc, name="b1", **options)
    wait_until(
        lambda: len(w1.last_offsets()) == 4 and min(w1.last_offsets().values()) >= 120,
        40,
        lambda: f"b1 at {w1.last_offsets()}; stderr: {w1.stderr_tail()}",
    )
    wait_committed(sc, sc.cams)
    w1.kill9()
    at_kill = wait_commits_landed(sc, w1, sc.cams)
    snapshot = sc.results()
    check_committed_covered(snapshot, at_kill, "b1 killed")
    beyond = {c: max(snapshot[c]) + 1 - at_kill[c] for c in sc.cams}
    # The kill must have hit the window: results delivered, their offsets not committed yet.
    assert any(n > 0 for n in beyond.values()), (
        f"nothing delivered past the commit at the kill: committed {at_kill}, results {beyond}"
    )
    assert all(min(snapshot[c]) == 0 for c in sc.cams), "the backlog starts with a keyframe at 0"

    t_restart = time.time()
    w2 = procs.worker(sc, name="b2", **options)

    def complete() -> bool:
        results = sc.results()
        return all(not missing(results[c], 0, frames) for c in sc.cams)

    done = poll_until(complete, 40, interval=0.5)
    caught_up = time.time() - t_restart
    closed = w2.terminate()
    final = sc.committed()
    results = sc.results()
    lost = check_nothing_lost(sc, results, final)
    gaps = {c: describe_runs(missing(results[c], 0, frames)) for c in sc.cams}
    early = {
        c: [o for o in duplicates(results[c]) if o < at_kill[c]]
        for c in sc.cams
        if any(o < at_kill[c] for o in duplicates(results[c]))
    }
    restarted_at = {c: worker_results(results[c], "b2")[:1] for c in sc.cams}
    print(
        f"\n[scale b] killed with committed {at_kill}, results past the commit {beyond}; "
        f"b2 resumed at {restarted_at}, whole backlog out {caught_up:.1f} s after the restart; "
        f"final commit {final}; duplicates {lost['duplicates']}"
    )
    assert done, f"results missing after the restart: {gaps}"
    assert not early, f"duplicates below the commit at the kill: {early}"
    assert restarted_at == {c: [at_kill[c]] for c in sc.cams}, "b2 must resume at the commit"
    assert all(final[c] >= frames - GOP for c in sc.cams), f"final commit {final}"
    assert not w2.errors() and closed["undelivered"] == 0, (w2.errors()[:3], closed)


# -- c) static membership: a replacement under the same instance id ------------------------------


def test_static_member_replacement_takes_over_at_once(kafka_broker, procs: Procs) -> None:
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    old = procs.worker(sc, name="w1-old", instance_id="w1")
    wait_frames(old, sc.cams)
    # In its stride: a periodic commit past the group's first one on every camera.
    wait_worker_committed(old, wait_committed(sc, sc.cams))
    old.kill9()
    new = procs.worker(sc, name="w1-new", instance_id="w1")  # at once
    at_kill = sc.committed()
    first = new.wait("first_frame", 60)
    takeover_s = first["t"] - new.started
    wait_frames(new, sc.cams, timeout=60)
    all_s = max(e["t"] for e in new.of("cam_first")) - new.started
    ready_s = new.of("ready")[0]["t"] - new.started
    wait_worker_committed(new, at_kill)  # the replacement commits its own progress
    closed = new.terminate()
    pub.stop()
    final = sc.committed()
    results = sc.results()
    lost = check_nothing_lost(sc, results, final)
    spans, handover = check_handover(results, sc.cams, "w1-old", "w1-new", at_kill, 3 * GOP)
    print(
        f"\n[scale c] static member w1 replaced: first frame {takeover_s:.2f} s after the "
        f"replacement started (its Comux ready after {ready_s:.2f} s), all 4 cameras after "
        f"{all_s:.2f} s (limit 10 s; 44-45 s before static membership); (last old, first new) "
        f"{spans}; duplicates {lost['duplicates']}"
    )
    assert not handover, "handover w1-old -> w1-new:\n" + "\n".join(handover)
    assert takeover_s < 10.0, f"takeover took {takeover_s:.1f} s"
    assert not new.errors() and closed["undelivered"] == 0, (new.errors()[:3], closed)


# -- d) a rebalance while the model holds a batch ------------------------------------------------


@dataclasses.dataclass
class HeldThroughRebalance:
    second: WorkerProc
    t: float  # when the hold started
    before: dict[str, int]  # the group's commits then
    held: dict[str, int]  # the held batch's offsets
    revoked: list[str]  # cameras of the held batch revoked while it was held
    taken: dict[str, int]  # the second worker's first frame of each of them
    closed: list[dict[str, Any]]  # both workers' ``closed`` events


def hold_through_a_rebalance(
    sc: Scenario, procs: Procs, first: WorkerProc, second: str, **options: Any
) -> HeldThroughRebalance:
    """``first`` holds its next batch while worker ``second`` joins and takes cameras of it;
    both are stopped once ``second`` committed those cameras past where it started."""
    first.signal(signal.SIGUSR1)
    holding = first.wait("holding", 10)
    before = sc.committed()
    w2 = procs.worker(sc, name=second, **options)
    revoked = first.wait("sent", 20)["revoked_in_hand"]
    assert revoked, (
        f"no camera of the held batch was revoked while it was held: {second}'s assignments "
        f"{w2.of('assignment')}, {first.name}'s {first.of('assignment')}"
    )
    wait_frames(w2, revoked)
    taken = {c: o for c, o in first_offsets(w2).items() if c in revoked}
    wait_worker_committed(w2, taken)
    for w in (first, w2):
        w.signal(signal.SIGTERM)
    closed = [first.terminate(), w2.terminate()]
    held = {c: int(o) for c, o in holding["offsets"].items()}
    return HeldThroughRebalance(w2, holding["t"], before, held, revoked, taken, closed)


def test_rebalance_while_a_batch_is_in_hand(kafka_broker, procs: Procs) -> None:
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    # Commits every 5 s: the held frame is then more than a GOP past the last periodic commit,
    # and what d2 resumes from tells whether d1 committed when it let its cameras go.
    w1 = procs.worker(sc, name="d1", hold_seconds=6.0, commit_interval=5.0)
    wait_frames(w1, sc.cams)
    wait_committed(sc, sc.cams)

    def past_the_commit() -> bool:  # the frames in d1's hands, and so the held ones next
        committed, last = sc.committed(), w1.last_offsets()
        return all(last.get(c, -1) > committed[c] + GOP for c in sc.cams)

    wait_until(
        past_the_commit,
        20,
        lambda: f"d1 at {w1.last_offsets()}, not a GOP past the commit {sc.committed()}",
        interval=0.3,
    )
    run = hold_through_a_rebalance(sc, procs, w1, "d2")
    pub.stop()
    w2, held = run.second, run.held

    results = sc.results()
    undelivered = [
        (c, o) for c, o in held.items() if not any(r.worker == "d1" for r in results[c].get(o, []))
    ]
    lost = check_nothing_lost(sc, results, sc.committed())
    print(
        f"\n[scale d] d1 held a batch {held} for 6 s (committed then {run.before}); revoked "
        f"meanwhile {run.revoked}; d2's first frames {run.taken}; results sent after the "
        f"revocation delivered: {len(held) - len(undelivered)}/{len(held)}; untracked sends "
        f"{run.closed[0]['untracked_sends']}; duplicates {lost['duplicates']}\n"
        f"  {timeline(run.t, w1, w2)}"
    )
    assert not undelivered, f"results sent after the revocation not on the output: {undelivered}"
    errors = w1.errors() + w2.errors()
    assert not errors and all(c["undelivered"] == 0 for c in run.closed), (errors[:3], run.closed)
    # Everything before the held frame was acked and delivered (flushed on revocation), so the
    # commit made on revocation is the keyframe at or before the held frame, done up to the held
    # frame: d2 decodes from the keyframe and hands out from the held frame on. Never past it:
    # its result was not delivered yet (it was sent after the revocation).
    assert run.taken == {c: held[c] for c in run.revoked}, (
        f"d1 did not commit its revoked cameras when it let them go: d2 resumed at {run.taken}, "
        f"the periodic commit before the rebalance was {run.before}; a commit on revocation "
        f"(everything before the held frames {held} was delivered) resumes at the held frames"
    )


@pytest.mark.parametrize("sent_first", [False, True], ids=["held-then-sent", "sent-then-held"])
def test_exactly_once_through_a_rebalance_with_a_batch_in_hand(
    kafka_broker, procs: Procs, sent_first: bool
) -> None:
    """(d) with transactional workers: read_committed readers see one result per offset, whether
    the held batch's results went out before the revocation or after it."""
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    w1 = procs.worker(
        sc, name="x1", hold_seconds=6.0, transactional=True, send_then_hold=sent_first
    )
    wait_frames(w1, sc.cams)
    wait_committed(sc, sc.cams)
    run = hold_through_a_rebalance(sc, procs, w1, "x2", transactional=True)
    pub.stop()
    w2 = run.second

    results = sc.results()
    lost = check_nothing_lost(sc, results, sc.committed())
    twice = {c: duplicates(results[c]) for c in sc.cams if duplicates(results[c])}
    print(
        f"\n[scale d, exactly-once] x1 held {run.held}; revoked meanwhile {run.revoked}; x2's "
        f"first frames {run.taken}; sends dropped as revoked {run.closed[0]['revoked_sends']}; "
        f"offsets with two committed results {lost['duplicates']}\n  {timeline(run.t, w1, w2)}"
    )
    errors = w1.errors() + w2.errors()
    assert not errors, errors[:3]
    assert not twice, f"offsets with more than one committed result: {twice}"
    if sent_first:
        # The revocation commits the open transaction (it holds the results of the cameras x1
        # keeps too) with the held frames of the revoked cameras done: x2 goes on after them.
        assert run.closed[0]["revoked_sends"] == dict.fromkeys(sc.cams, 0)
        assert run.taken == {c: run.held[c] + 1 for c in run.revoked}
    else:
        # The held frames' results, sent after their cameras were revoked, are dropped: x2
        # reads those frames again, and x1's next transaction would commit them a second time.
        assert run.closed[0]["revoked_sends"] == {c: int(c in run.revoked) for c in sc.cams}
        # x2 resumes at the first frame x1 did not commit a result for: the held one. Decoding
        # starts at its GOP's keyframe, but the frames x1 finished are not handed out again.
        assert run.taken == {c: run.held[c] for c in run.revoked}


# -- e) a model slower than max.poll.interval.ms -------------------------------------------------


def test_model_slower_than_max_poll_interval(kafka_broker, procs: Procs) -> None:
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    options = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}
    w = procs.worker(sc, name="e1", hold_seconds=8.0, options=options)
    wait_frames(w, sc.cams)
    wait_committed(sc, sc.cams)
    w.signal(signal.SIGUSR1)
    holding = w.wait("holding", 10)
    sent = w.wait("sent", 20)
    held = {c: int(o) for c, o in holding["offsets"].items()}
    box: dict[str, int] = {}

    def committed_past() -> bool:
        box.update(sc.committed(list(held)))
        return all(box[c] > held[c] for c in held)

    past = poll_until(committed_past, 15, interval=0.3)
    past_s = time.time() - sent["t"]
    t_past = time.time()
    # frames after the slow batch: batches reported since the commit passed the held frames
    poll_until(lambda: w.cams_since(t_past) == set(sc.cams), 10, interval=0.1)
    recent = w.cams_since(t_past)
    closed = w.terminate()
    pub.stop()
    final = sc.committed()
    results = sc.results()
    lost = check_nothing_lost(sc, results, final)
    assignments = [e["cams"] for e in w.of("assignment")]
    undelivered = [(c, o) for c, o in held.items() if o not in results[c]]
    print(
        f"\n[scale e] a batch held {sent['t'] - holding['t']:.1f} s with max.poll.interval.ms "
        f"6000: assignments {assignments}, revoked in hand {sent['revoked_in_hand']}; "
        f"committed past the held frames {past_s:.1f} s after its results were sent ({box}); "
        f"duplicates {lost['duplicates']}"
    )
    assert assignments == [sorted(sc.cams)], f"membership changed: {assignments}"
    assert not sent["revoked_in_hand"], sent
    assert not undelivered, f"results of the held batch not on the output: {undelivered}"
    assert past, f"commit never passed the held frames {held}: {box}"
    assert recent == set(sc.cams), f"frames after the slow batch from {sorted(recent)}"
    assert not w.errors() and closed["undelivered"] == 0, (w.errors()[:3], closed)


# -- f) a worker added to a running one: cameras not committed yet move without a gap ------------


def test_added_worker_takes_uncommitted_cameras_without_a_gap(kafka_broker, procs: Procs) -> None:
    """f1 runs alone and has not reached a periodic commit (every 60 s) when f2 joins: the
    cameras it gives up are committed on revocation, so f2 resumes where f1 stopped."""
    sc = Scenario(kafka_broker.bootstrap, [f"c{i}" for i in range(4)])
    sc.create_topics()
    pub = procs.publisher(sc)
    pub.wait_flowing()
    w1 = procs.worker(sc, name="f1", commit_interval=60.0)
    wait_frames(w1, sc.cams)
    # f1 is a GOP past its first frame on every camera: results across a keyframe, uncommitted
    start1 = first_offsets(w1)
    wait_until(
        lambda: all(w1.last_offsets().get(c, -1) >= start1[c] + GOP for c in sc.cams),
        20,
        lambda: f"f1 at {w1.last_offsets()}, started at {start1}",
    )
    w2 = procs.worker(sc, name="f2")
    wait_until(
        lambda: len(w2.of("cam_first")) >= 1 and time.time() - w2.of("cam_first")[-1]["t"] > 1.5,
        30,
        lambda: f"f2 took no camera: {w2.of('assignment')}; stderr: {w2.stderr_tail()}",
    )
    moved = sorted(e["cam"] for e in w2.of("cam_first"))
    # f2 goes on with what it took: it committed each moved camera past where it started.
    start2 = first_offsets(w2)
    wait_worker_committed(w2, {c: start2[c] for c in moved})
    for w in (w1, w2):
        w.signal(signal.SIGTERM)
    closed = [w1.terminate(), w2.terminate()]
    pub.stop()
    results = sc.results()
    spans = {}
    for cam in moved:
        before, after = worker_results(results[cam], "f1"), worker_results(results[cam], "f2")
        spans[cam] = (before[-1] if before else None, after[0] if after else None)
    gaps = {c: s for c, s in spans.items() if None in s or s[1] > s[0] + 1}
    print(f"\n[scale f] f2 took {moved}: (last f1, first f2) {spans}")
    assert not gaps, (
        f"frames lost when f2 took cameras f1 had not committed yet: (last f1, first f2) {gaps}"
    )
    check_nothing_lost(sc, results, sc.committed())
    errors = w1.errors() + w2.errors()
    assert not errors and all(c["undelivered"] == 0 for c in closed), (errors[:3], closed)
