"""A DEBUG log of the command-line tools holds no credentials: the AWS libraries stay at WARNING."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.environment import clean_env

REPO = Path(__file__).resolve().parents[2]
FAKE_KEY_ID = "AKIAFAKEKEYID0000002"
FAKE_SECRET = "FakeSecretKeyDoNotLog0000000000000000000"
FAKE_TOKEN = "FakeSessionTokenDoNotLog00000000000000000000"

# What the orchestrator does at --log-level DEBUG: configure logging, then use S3 and SQS.
SCRIPT = textwrap.dedent("""
    import logging
    from am.cli import configure_logging
    from am.endpoint import EmbeddedEndpoint
    from am.transport.clients import ClientFactory
    from am.transport.queue import Queue, create_results_queue
    from am.transport.storage import Storage

    configure_logging("DEBUG")
    logging.getLogger("am.check").debug("debug lines are written")
    with EmbeddedEndpoint() as endpoint:
        clients = ClientFactory(endpoint_url=endpoint.url)
        storage = Storage(clients.s3())
        storage.ensure_bucket("debug-log")
        storage.put_bytes("debug-log", "k", b"data")
        assert storage.get_bytes("debug-log", "k") == b"data"
        queue = Queue(clients.sqs(), create_results_queue(clients.sqs(), prefix="debug-log", job="j"))
        queue.send_many(["hello"])
        assert [m.body for m in queue.receive(wait_s=1)] == ["hello"]
""")


def test_an_orchestrator_debug_log_holds_no_credentials() -> None:
    env = clean_env(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_SESSION_TOKEN=FAKE_TOKEN,
                    AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "debug lines are written" in done.stderr
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, "Signature=", "X-Amz-Security-Token"):
        assert secret not in done.stderr, f"{secret} in a DEBUG log"
