"""``python -m am.scale``: look at and steer the AWS workers of an am-segm stack.

Examples::

    python -m am.scale --stack am-segm status
    python -m am.scale --stack am-segm set --min 0 --max 8
    python -m am.scale --stack am-segm start 4
    python -m am.scale --stack am-segm drain --wait 600
    python -m am.scale --stack am-segm redrive --dry-run

Resources come from the stack's outputs (``--stack`` or ``stack_name`` in the config file),
overridden by explicit settings; credentials from boto3's standard chain. Exit code 0 on
success, 1 when a command fails, 2 for a usage error.
"""

from __future__ import annotations

# Loaded with the interpreter or the package already, so importing them leaves no time for a Ctrl-C;
# every other import is in the try below.
import logging
import os

try:
    import argparse
    import json
    import math
    from collections.abc import Sequence
    from functools import partial
    from typing import Any

    from am.cli import add_log_level_option, configure_logging, run_main, text_option
    from am.launchers.aws_stack import AwsResources, resolve_aws_resources
    from am.scale.control import drain, resume, set_desired_count, set_limits, start_tasks
    from am.scale.redrive import RedriveReport, redrive
    from am.scale.status import format_status, read_status
    from am.settings import Settings, config_path_from, load_settings
    from am.startup import NOTHING_DONE, hold_ctrl_c, run_command
    from am.transport.clients import ClientFactory

    if __name__ == "__main__":
        hold_ctrl_c()  # until run_command runs main() (the end of this file)
except KeyboardInterrupt:
    from am.startup import interrupted_while_loading  # again: the Ctrl-C may have come while am.startup loaded

    interrupted_while_loading(__name__, "am.scale")

log = logging.getLogger("am.scale")

# One-off tasks started by hand leave after this long without work, unless told otherwise.
DEFAULT_IDLE_EXIT_S = 300.0


class Clients:
    """The boto3 clients one command needs, all for the same endpoint and region."""

    def __init__(self, settings: Settings) -> None:
        self.factory = ClientFactory(endpoint_url=settings.endpoint_url, region=settings.region)
        self.sqs = self.factory.sqs()
        self.ecs = self.factory.ecs()
        self.cloudformation = self.factory.cloudformation()

    def autoscaling(self) -> Any:
        return self.factory.autoscaling()


# argparse names a type function in its own message for a ValueError ("invalid _non_negative value:
# 'abc'"): each type function below raises ArgumentTypeError instead, whose text argparse shows as it is.


def _whole_number(text: str, *, least: int) -> int:
    """``text`` as a whole number >= ``least``, else an ArgumentTypeError that says what to give."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}; give a whole number >= {least}")
    return value


def _non_negative(text: str) -> int:
    return _whole_number(text, least=0)


def _positive(text: str) -> int:
    return _whole_number(text, least=1)


def _seconds(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan  # refused below, in the same words as any other number that is no duration
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds {'>= 0' if zero else '> 0'}")
    return value


def _positive_seconds(text: str) -> float:
    """A worker's idle time (AM_IDLE_EXIT_S): workers refuse any other value at start."""
    return _seconds(text, zero=False)


def _wait_seconds(text: str) -> float:
    return _seconds(text, zero=True)


def _job(text: str) -> str:
    """A job id for ``redrive --job``: an empty one would be taken as no job given, moving every job's tiles."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty, which would re-drive the tiles of every job; give a "
                                         "job id, or leave --job out to re-drive all jobs")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m am.scale",
        description="Show and steer the am-segm workers on AWS: queue depth, ECS tasks, scaling, "
                    "draining and re-driving dead tiles.",
        epilog="Settings resolve as: option, AM_<KEY> environment variable, config file, default. "
               "Credentials come from boto3's standard chain (profile, environment, role).",
    )
    parser.add_argument("--config", type=text_option, metavar="FILE",
                        help="config file (default: $AM_CONFIG, else none)")
    parser.add_argument("--stack", metavar="NAME", help="CloudFormation stack to read resources from "
                        "(settings key stack_name)")
    parser.add_argument("--region", help="AWS region (settings key region)")
    parser.add_argument("--endpoint-url", metavar="URL", help="talk to this endpoint instead of AWS (testing)")
    add_log_level_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = commands.add_parser("status", help="queue depth, dead letters, service and task counts")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    set_cmd = commands.add_parser("set", help="set the service's desired count or its auto scaling bounds")
    set_cmd.add_argument("--desired", type=_non_negative, metavar="N", help="desired task count now")
    set_cmd.add_argument("--min", type=_non_negative, dest="min_tasks", metavar="N", help="auto scaling minimum")
    set_cmd.add_argument("--max", type=_non_negative, dest="max_tasks", metavar="N", help="auto scaling maximum")

    start = commands.add_parser("start", help="start N one-off worker tasks (outside the service)")
    start.add_argument("count", type=_positive, metavar="N", help="number of tasks")
    start.add_argument("--idle-exit-s", type=_positive_seconds, default=DEFAULT_IDLE_EXIT_S, metavar="S",
                       help=f"each task exits after S seconds without work (default {DEFAULT_IDLE_EXIT_S:.0f})")

    drain_cmd = commands.add_parser(
        "drain", help="stop taking new work: suspend scale-out, service to 0, one-off tasks finish their batch")
    drain_cmd.add_argument("--wait", type=_wait_seconds, default=0.0, metavar="S",
                           help="wait up to S seconds for the workers to exit (default: do not wait)")

    commands.add_parser("resume", help="let auto scaling scale the service out again after a drain")

    redrive_cmd = commands.add_parser("redrive", help="move dead-letter tiles back to the tile queue")
    redrive_cmd.add_argument("--job", type=_job, metavar="JOB", help="only this job's tiles")
    redrive_cmd.add_argument("--max", type=_positive, dest="max_messages", metavar="N",
                             help="move at most N messages (each carries up to tiles_per_message tiles)")
    redrive_cmd.add_argument("--drop-orphans", action="store_true",
                             help="delete tiles whose job has ended (its results queue is gone)")
    redrive_cmd.add_argument("--dry-run", action="store_true", help="only list what would move")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"stack_name": args.stack, "region": args.region, "endpoint_url": args.endpoint_url,
                 "log_level": args.log_level, "backend": "aws"}
    return load_settings(overrides, environ=os.environ, config_path=config_path_from(args.config, os.environ))


def _print_redrive(report: RedriveReport) -> None:
    """Counts are of messages (a message carries up to tiles_per_message tiles; each line names its first)."""
    verb = "would move" if report.dry_run else "moved"
    print(f"{verb} {len(report.moved)} message(s) back to the tile queue")
    for name in report.moved:
        print(f"  {name}")
    if report.orphans:
        if report.dry_run and report.drop_orphans:
            print(f"would delete {len(report.orphans)} message(s) of ended jobs:")
        else:
            print(f"left {len(report.orphans)} message(s) of ended jobs (use --drop-orphans to delete them):")
        for name in report.orphans:
            print(f"  {name}")
    if report.dropped:
        print(f"deleted {len(report.dropped)} message(s) of ended jobs")
    if report.other_jobs:
        print(f"left {report.other_jobs} message(s) of other jobs")
    if report.unreadable:
        print(f"left {report.unreadable} unreadable message(s); see the log")


def run(args: argparse.Namespace, settings: Settings) -> int:
    clients = Clients(settings)
    resources: AwsResources = resolve_aws_resources(
        settings, cloudformation_client=clients.cloudformation, sqs_client=clients.sqs)
    if args.command == "status":
        status = read_status(resources, sqs_client=clients.sqs, ecs_client=clients.ecs,
                             autoscaling_client=clients.autoscaling() if resources.service else None)
        print(json.dumps(status.to_dict(), indent=2) if args.json else format_status(status))
    elif args.command == "set":
        # The bounds first: a refused bound must leave the desired count, and the GPU tasks it starts, alone.
        if args.min_tasks is not None or args.max_tasks is not None:
            low, high = set_limits(clients.autoscaling(), resources, min_tasks=args.min_tasks,
                                   max_tasks=args.max_tasks)
            print(f"service auto scaling: min {low}, max {high}")
            if args.desired is not None and not low <= args.desired <= high:
                log.warning("--desired %d is outside the auto scaling bounds %d-%d: auto scaling will move it back "
                            "inside them", args.desired, low, high)
        if args.desired is not None:
            before = set_desired_count(clients.ecs, resources, args.desired)
            print(f"service desired count: {before} -> {args.desired}")
    elif args.command == "start":
        arns = start_tasks(clients.ecs, resources, args.count, idle_exit_s=args.idle_exit_s)
        print(f"started {len(arns)} of {args.count} task(s):")
        for arn in arns:
            print(f"  {arn.rsplit('/', 1)[-1]}")
        if len(arns) < args.count:
            return 1
    elif args.command == "drain":
        report = drain(clients.ecs, clients.autoscaling() if resources.service else None, resources,
                       wait_s=args.wait)
        if report.service_desired_before is not None:
            print(f"service desired count: {report.service_desired_before} -> 0"
                  + (" (scale-out suspended; `resume` to undo)" if report.scale_out_suspended else ""))
        print(f"asked {len(report.stopped_tasks)} one-off task(s) to finish their batch and exit")
        print(f"{report.remaining} worker task(s) still finishing" if report.remaining else "no worker task left")
    elif args.command == "resume":
        resume(clients.autoscaling(), resources)
        print("auto scaling resumed")
    elif args.command == "redrive":
        _print_redrive(redrive(clients.sqs, resources, job=args.job, max_messages=args.max_messages,
                               drop_orphans=args.drop_orphans, dry_run=args.dry_run))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "set" and args.desired is None and args.min_tasks is None and args.max_tasks is None:
        parser.error("set needs --desired, --min or --max")
    if args.command == "set" and None not in (args.min_tasks, args.max_tasks) and args.min_tasks > args.max_tasks:
        parser.error(f"--min {args.min_tasks} is above --max {args.max_tasks}: give min <= max")
    # Until the settings are read, so that a bad setting (AM_REGION, the config file) is reported.
    configure_logging(args.log_level or "INFO")
    return run_main(partial(_configured_run, args), name=f"am.scale.{args.command}")


def _configured_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log_level)
    # boto's own INFO lines (where credentials came from) are noise to an operator.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(settings.log_level), logging.WARNING))
    return run(args, settings)


if __name__ == "__main__":
    run_command(main, "am.scale", NOTHING_DONE)
