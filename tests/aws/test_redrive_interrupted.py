"""``am.scale redrive`` stopped part-way (Ctrl-C, an error) leaves no message of the dead-letter queue hidden.

Each batch it receives is hidden for HOLD_S (300 s) while it is sorted and moved; a run that
stops must make visible again, at once, every message it received and did not delete, or a
rerun right after finds nothing to move while the dead-letter queue still holds those tiles.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from am.errors import CleanupIncomplete, ScaleError
from am.launchers.aws_stack import AwsResources
from am.messages import TileMessage
from am.scale.__main__ import main
from am.transport.queue import Queue
from tests.aws.conftest import STACK, client

redrive_module = importlib.import_module("am.scale.redrive")  # am.scale.redrive is also the function's name
redrive = redrive_module.redrive


@pytest.fixture(autouse=True)
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C as in a terminal, whatever this process inherited: a job started in the background (``make test &``,
    nohup) ignores SIGINT, and the re-drive then rightly takes over no handler; put back after each test."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _no_long_poll(monkeypatch) -> None:
    # moto answers at once; no need to long-poll.
    monkeypatch.setattr(redrive_module, "RECEIVE_WAIT_S", 0)


def scale(*args: str) -> int:
    return main(["--stack", STACK, "--region", "us-east-1", *args])


def _dead_letters(dead_letter_queue_url: str, *jobs: str) -> None:
    """One dead-lettered message (one tile) per entry of ``jobs``, each job with its results queue (it still runs)."""
    sqs = client("sqs")
    for tile, job in enumerate(jobs):
        reply = sqs.create_queue(QueueName=f"am-segm-results-{job}")["QueueUrl"]
        key = f"{job}/g/{tile:04d}.npy"
        body = TileMessage(job=job, group="g", tiles=(tile,), input=key, output=key, model="s3://m/models/x.pt",
                           reply=reply).to_json()
        sqs.send_message(QueueUrl=dead_letter_queue_url, MessageBody=body)


def _depth(url: str) -> tuple[int, int]:
    """(visible, hidden) messages of a queue."""
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _on_call(monkeypatch, method: str, number: int, action: Callable[[], None], *, then_call: bool) -> list[int]:
    """Wrap ``Queue.<method>``: its call number ``number`` first runs ``action`` (raise, send a signal), then
    the real call where ``then_call``. Returns the list counting the calls."""
    real = getattr(Queue, method)
    calls: list[int] = []

    def wrapped(self: Queue, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == number:
            action()
            if not then_call:
                return None
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Queue, method, wrapped)
    return calls


def _interrupt() -> None:
    raise KeyboardInterrupt


def _ctrl_c() -> None:
    """A real Ctrl-C: Python runs the handler in the main thread at once, before the next line."""
    os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_while_sending_a_batch_releases_it_at_once_and_a_rerun_moves_it(aws, stack, monkeypatch,
                                                                                capsys) -> None:
    """The reviewer's case: a rerun right after a Ctrl-C found nothing while 8 messages were hidden for 300 s."""
    _dead_letters(stack["DeadLetterQueueUrl"], *["ja"] * 18)
    send_many = Queue.send_many
    _on_call(monkeypatch, "send_many", 2, _interrupt, then_call=False)  # the second batch's send
    assert scale("redrive") == 130
    err = capsys.readouterr().err
    assert _depth(stack["DeadLetterQueueUrl"]) == (8, 0)
    assert _depth(stack["QueueUrl"]) == (10, 0)
    assert "re-drive stopped after moving 10 message(s) back to the tile queue" in err
    assert "visible again in the dead-letter queue" in err
    assert "8 message(s) among those were being sent to the tile queue and may be there already" in err
    assert "rerun the same command to move the rest" in err
    assert "interrupted; cleaned up" in err

    monkeypatch.setattr(Queue, "send_many", send_many)
    assert scale("redrive") == 0
    assert "moved 8 message(s) back to the tile queue" in capsys.readouterr().out
    assert _depth(stack["DeadLetterQueueUrl"]) == (0, 0)
    assert _depth(stack["QueueUrl"]) == (18, 0)


def test_a_stop_between_send_and_delete_deletes_what_was_sent(aws, stack, monkeypatch, capsys) -> None:
    """What SQS took on the tile queue is deleted from the dead-letter queue before the command ends: no duplicate."""
    _dead_letters(stack["DeadLetterQueueUrl"], *["ja"] * 18)
    _on_call(monkeypatch, "delete_many", 2, _interrupt, then_call=False)  # after the second batch's send
    assert scale("redrive") == 130
    err = capsys.readouterr().err
    assert "re-drive stopped after moving 18 message(s)" in err
    assert _depth(stack["DeadLetterQueueUrl"]) == (0, 0)
    assert _depth(stack["QueueUrl"]) == (18, 0)


def test_an_error_on_one_job_releases_the_whole_batch(cluster_resources, caplog) -> None:
    """A results queue that cannot be checked stops the run; no message of the batch stays hidden, none is
    counted as moved that was not."""
    resources: AwsResources = cluster_resources
    _dead_letters(resources.dead_letter_queue_url, *["ja"] * 5, "jz", *["ja"] * 4)
    sqs = client("sqs")

    class Denied:
        def __getattr__(self, name: str) -> Any:
            return getattr(sqs, name)

        def get_queue_attributes(self, **kwargs: Any) -> Any:
            if kwargs["QueueUrl"].endswith("-jz"):
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}},
                                  "GetQueueAttributes")
            return sqs.get_queue_attributes(**kwargs)

    with caplog.at_level(logging.INFO), pytest.raises(ScaleError, match="AccessDenied"):
        redrive(Denied(), resources)
    assert "re-drive stopped after moving 0 message(s)" in caplog.text
    assert "rerun the same command, once the error is dealt with, to move the rest" in caplog.text
    assert _depth(resources.dead_letter_queue_url) == (10, 0)
    assert _depth(resources.queue_url) == (0, 0)
    assert len(redrive(sqs, resources, job="ja").moved) == 9


def test_a_real_ctrl_c_while_a_batch_moves_lets_it_finish_then_stops(cluster_resources, monkeypatch, caplog) -> None:
    """A signal during the send waits for the batch's delete: no message is left half-moved."""
    resources: AwsResources = cluster_resources
    _dead_letters(resources.dead_letter_queue_url, *["ja"] * 14)
    before = signal.getsignal(signal.SIGINT)
    _on_call(monkeypatch, "send_many", 1, _ctrl_c, then_call=True)
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        redrive(client("sqs"), resources)
    assert signal.getsignal(signal.SIGINT) is before
    assert "stopping once the current call to SQS is done" in caplog.text
    assert "re-drive stopped after moving 10 message(s)" in caplog.text
    assert "may be there already" not in caplog.text
    assert _depth(resources.queue_url) == (10, 0)
    assert _depth(resources.dead_letter_queue_url) == (4, 0)


def test_a_second_ctrl_c_during_the_clean_up_does_not_cut_it_short(cluster_resources, monkeypatch, caplog) -> None:
    resources: AwsResources = cluster_resources
    _dead_letters(resources.dead_letter_queue_url, *["ja"] * 6, *["jb"] * 4)
    _on_call(monkeypatch, "send_many", 1, _interrupt, then_call=False)
    releases = _on_call(monkeypatch, "change_visibility_many", 1, _ctrl_c, then_call=True)
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        redrive(client("sqs"), resources, job="ja")
    assert releases  # the signal came during the clean-up
    assert "press Ctrl-C again (or send SIGTERM again) to quit at once" in caplog.text
    assert _depth(resources.dead_letter_queue_url) == (10, 0)
    assert _depth(resources.queue_url) == (0, 0)


def test_insisting_quits_the_clean_up_and_says_what_stays_hidden(cluster_resources, monkeypatch) -> None:
    resources: AwsResources = cluster_resources
    _dead_letters(resources.dead_letter_queue_url, *["ja"] * 10)
    _on_call(monkeypatch, "send_many", 1, _interrupt, then_call=False)

    def twice() -> None:
        _ctrl_c()
        _ctrl_c()

    _on_call(monkeypatch, "change_visibility_many", 1, twice, then_call=True)
    with pytest.raises(BaseException) as info:  # not a bare KeyboardInterrupt, which would end the test session
        redrive(client("sqs"), resources)
    assert isinstance(info.value, CleanupIncomplete), repr(info.value)
    assert "10 message(s) it received stay hidden in the dead-letter queue for up to 300 s" in str(info.value)
    assert _depth(resources.dead_letter_queue_url) == (0, 10)  # as before the fix, no worse: nothing lost
    assert _depth(resources.queue_url) == (0, 0)
