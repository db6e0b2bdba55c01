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
