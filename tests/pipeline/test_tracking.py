import pytest

from am.tracking import JobTracker


def test_each_tile_counts_once_and_duplicates_are_counted_apart():
    tracker = JobTracker(["g/0000", "g/0001"], max_attempts=3)
    assert tracker.done("g/0000", compute_s=0.5)
    assert not tracker.done("g/0000", compute_s=0.5)
    assert tracker.duplicates == 1 and tracker.compute_s == 0.5
    assert tracker.pending == {"g/0001"} and not tracker.finished
    assert tracker.done("g/0001")
    assert tracker.finished and tracker.completed == {"g/0000", "g/0001"}


def test_a_tile_is_given_up_after_its_last_attempt_with_its_error():
    tracker = JobTracker(["g/0000"], max_attempts=3)
    assert not tracker.failed("g/0000", attempt=1, error="cannot decode")
    assert not tracker.failed("g/0000", attempt=2, error="cannot decode")
    assert tracker.failed("g/0000", attempt=3, error="cannot decode")
    assert tracker.finished and "cannot decode" in tracker.dead["g/0000"]
    assert not tracker.done("g/0000")  # a late success does not resurrect it


def test_dead_letter_reason_keeps_the_last_worker_error():
    tracker = JobTracker(["g/0000"], max_attempts=3)
    tracker.failed("g/0000", attempt=1, error="bad bytes")
    tracker.give_up("g/0000", "moved to the dead-letter queue after 3 receives")
    assert "dead-letter" in tracker.dead["g/0000"] and "bad bytes" in tracker.dead["g/0000"]


def test_a_tracker_expecting_more_tiles_finishes_only_once_sealed():
    tracker = JobTracker([], max_attempts=3, expect_more=True)
    assert not tracker.finished and not tracker.sealed
    tracker.add(["g/0000", "g/0001"])
    assert tracker.done("g/0000") and tracker.done("g/0001")
    assert not tracker.finished, "every tile sent so far is done, but more may still come"
    tracker.add(["g/0002"])
    assert tracker.total == 3 and tracker.pending == {"g/0002"}
    tracker.seal()
    assert not tracker.finished
    assert tracker.done("g/0002") and tracker.finished


def test_a_tile_cannot_be_added_twice_or_after_the_seal():
    tracker = JobTracker([], max_attempts=3, expect_more=True)
    tracker.add(["g/0000"])
    tracker.done("g/0000")
    with pytest.raises(ValueError, match="g/0000"):
        tracker.add(["g/0000"])
    tracker.seal()
    with pytest.raises(ValueError, match="sealed"):
        tracker.add(["g/0001"])
