"""A stand-in ``aws`` command for the Makefile's AWS targets: it records each call and plays the
CLI's answers, so ``make deploy`` and ``make undeploy`` run for real without an account."""

from __future__ import annotations

import sys

# The start of every stand-in: log the call to $FAKE_LOG, drop --region, leave the service and
# operation in ``command`` and every argument in ``args`` for the answers that follow.
FAKE_AWS_PREAMBLE = f"""#!{sys.executable}
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write("aws " + " ".join(args) + "\\n")
if os.environ.get("FAKE_WARNING"):  # what the CLI may print on a call that succeeds
    sys.stderr.write(os.environ["FAKE_WARNING"] + "\\n")
if args[:1] == ["--region"]:
    args = args[2:]
command = args[:2]
"""
