"""The commit ledger: a commit never passes a frame the model holds or a result not delivered."""

from __future__ import annotations

from comux.offsets import OffsetLedger, done_metadata, parse_done


def decoded(ledger: OffsetLedger, upto: int, keyframes: list[int]) -> None:
    """Say offsets below ``upto`` were decoded, with keyframes at ``keyframes``."""
    for key in keyframes:
        ledger.decoded(upto, key)


def test_nothing_is_committed_before_a_keyframe_is_known():
    ledger = OffsetLedger()
    assert ledger.commit_point() is None
    ledger.decoded(5, -1)
    assert ledger.commit_point() is None
    ledger.decoded(6, 0)
    assert ledger.commit_point() == (0, 6)


def test_the_point_lands_on_the_gop_start_at_or_before_the_done_offsets():
    ledger = OffsetLedger()
    decoded(ledger, 25, [0, 10, 20])
    assert ledger.commit_point() == (20, 25)
    ledger.confirm(20, 25)
    assert ledger.commit_point() is None
    ledger.decoded(26, 20)
    assert ledger.commit_point() == (20, 26)  # the done point moved on within the GOP


def test_a_frontier_on_a_keyframe_commits_that_keyframe():
    ledger = OffsetLedger()
    decoded(ledger, 20, [0, 10, 20])
    assert ledger.commit_point() == (20, 20)


def test_a_frame_in_the_models_hands_holds_the_point_until_acked():
    ledger = OffsetLedger()
    decoded(ledger, 1, [0])
    ledger.hold(0)
    ledger.decoded(25, 10)
    ledger.decoded(25, 20)
    assert ledger.commit_point() == (0, 0)
    ledger.ack(0)
    assert ledger.commit_point() == (20, 25)


def test_a_sent_result_holds_the_point_until_delivered_and_a_failure_for_good():
    ledger = OffsetLedger()
    decoded(ledger, 31, [0, 10, 20, 30])
    ledger.hold(12)
    ledger.hold(22)
    assert ledger.sending(12) and ledger.sending(22)
    ledger.ack(22)  # acks every frame that reached the batches before it
    assert ledger.commit_point() == (10, 12)
    ledger.delivered(12, ok=True)
    assert ledger.commit_point() == (20, 22)
    ledger.delivered(22, ok=False)
    assert ledger.commit_point() == (20, 22)
    assert ledger.delivery_failed == 1
    ledger.confirm(20, 22)
    assert ledger.commit_point() is None  # never again, never further


def test_replaced_frames_do_not_hold_the_point_and_late_sends_are_counted():
    ledger = OffsetLedger()
    decoded(ledger, 11, [0, 10])
    ledger.hold(3)
    ledger.drop(3)  # a newer frame replaced it in the batch
    assert ledger.commit_point() == (10, 11)
    assert not ledger.sending(3)
    assert ledger.untracked_sends == 1


def test_b_frames_are_acked_in_batch_order_not_offset_order():
    ledger = OffsetLedger()
    decoded(ledger, 8, [0])
    for offset in (0, 3, 1, 2):  # display order of I P B B
        ledger.hold(offset)
    ledger.ack(1)  # 0 and 3 went out before 1: done too; 2 still held
    assert ledger.commit_point() == (0, 2)
    assert len(ledger) == 1
    ledger.ack(2)
    assert len(ledger) == 0


def test_reset_forgets_a_revoked_partition():
    ledger = OffsetLedger()
    decoded(ledger, 11, [0, 10])
    ledger.hold(10)
    ledger.confirm(0, 10)
    ledger.reset()
    assert ledger.commit_point() is None and len(ledger) == 0 and ledger.committed == -1


def test_the_done_point_travels_in_the_commits_metadata():
    assert parse_done(done_metadata(1234)) == 1234
    for other in (None, "", "set by kafka-consumer-groups", "comux-done=x"):
        assert parse_done(other) == -1


def test_a_revoked_frame_in_hand_is_done_only_if_a_result_for_it_was_delivered():
    ledger = OffsetLedger()
    decoded(ledger, 12, [0, 10])
    ledger.hold(10)
    ledger.hold(11)
    assert ledger.sending(10) and ledger.sending(11)
    ledger.delivered(10, ok=True)
    ledger.delivered(11, ok=None)  # dropped before it was produced
    ledger.ack(11, if_delivered=True)
    assert ledger.commit_point() == (10, 10)
    ledger.ack(10, if_delivered=True)
    assert ledger.commit_point() == (10, 11)
    assert ledger.delivery_failed == 0
