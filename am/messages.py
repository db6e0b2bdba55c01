"""Queue message contracts between the orchestrator and the workers.

A :class:`TileMessage` asks a worker to segment one tile; a :class:`TileResult` is the worker's
report back on the job's results queue. Both are frozen and validated on the way in, because a
worker must never follow a key outside its job's prefix, whoever wrote the message::

    msg = TileMessage(job="j1", group="g", tile=7, input="j1/g/0007.png",
                      output="j1/g/0007.png", model="s3://m/model.pt", reply=url)
    assert TileMessage.from_json(msg.to_json()) == msg
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from am.errors import MessageError

MESSAGE_VERSION = 1

# Job ids and group names become S3 key segments and queue-name suffixes.
JOB_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# An SQS queue name allows 80 characters of [A-Za-z0-9_-].
QUEUE_URL_PATTERN = re.compile(r"^https?://[^\s/]+(/[^\s/]+)*/[A-Za-z0-9_-]{1,80}$")

RESULT_DONE = "done"
RESULT_FAILED = "failed"


def tile_key(job: str, group: str, tile: int) -> str:
    """The object key of a tile (input bucket) and of its mask (output bucket)."""
    return f"{job}/{group}/{tile:04d}.png"


def tile_name(group: str, tile: int) -> str:
    """How a tile is named to people: in logs, errors and the summary."""
    return f"{group}/{tile:04d}"


def check_job_id(job: str) -> str:
    if not isinstance(job, str) or not JOB_ID_PATTERN.match(job):
        raise MessageError(
            f"job id {job!r} is not valid: use 1-63 lower-case letters, digits and '-'"
        )
    return job


def check_group(group: str) -> str:
    if not isinstance(group, str) or not GROUP_PATTERN.match(group) or ".." in group:
        raise MessageError(
            f"group name {group!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(at most 128, no '..'); rename the folder under source/"
        )
    return group


def check_key_in_job(key: str, job: str, *, field: str) -> str:
    """Reject keys that could escape the job's prefix, so a forged message reads or writes nothing else."""
    if not isinstance(key, str) or not key:
        raise MessageError(f"{field} key must be a non-empty string, got {key!r}")
    parts = key.split("/")
    if (
        not key.startswith(f"{job}/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 for c in key)
    ):
        raise MessageError(f"{field} key {key!r} leaves the prefix of job {job!r}; message rejected")
    return key


def _load_object(text: str | bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{kind} is not JSON ({exc}): {str(text)[:200]!r}") from exc
    if not isinstance(data, dict):
        raise MessageError(f"{kind} must be a JSON object, got {type(data).__name__}")
    if data.get("v") != MESSAGE_VERSION:
        raise MessageError(f"{kind} has version {data.get('v')!r}; this build reads version {MESSAGE_VERSION}")
    return data


def _take(data: dict[str, Any], fields: dict[str, type], kind: str) -> dict[str, Any]:
    missing = [name for name in fields if name not in data]
    if missing:
        raise MessageError(f"{kind} lacks field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(fields) - {"v"})
    if unknown:
        raise MessageError(f"{kind} has unknown field(s) {', '.join(unknown)}")
    out = {}
    for name, typ in fields.items():
        value = data[name]
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise MessageError(f"{kind} field {name!r} must be an integer, got {value!r}")
        if typ is str and not isinstance(value, str):
            raise MessageError(f"{kind} field {name!r} must be a string, got {value!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class TileMessage:
    """One tile to segment: where to read it, where to write its mask, whom to tell."""

    job: str
    group: str
    tile: int
    input: str
    output: str
    model: str
    reply: str

    def __post_init__(self) -> None:
        check_job_id(self.job)
        check_group(self.group)
        if self.tile < 0:
            raise MessageError(f"tile number must be >= 0, got {self.tile}")
        check_key_in_job(self.input, self.job, field="input")
        check_key_in_job(self.output, self.job, field="output")
        if not self.model:
            raise MessageError("model must name a checkpoint path or s3:// URI")
        if not QUEUE_URL_PATTERN.match(self.reply) or not self.reply.endswith(f"-{self.job}"):
            raise MessageError(f"reply queue {self.reply!r} is not the results queue of job {self.job!r}")

    @property
    def name(self) -> str:
        return tile_name(self.group, self.tile)

    def to_json(self) -> str:
        return json.dumps({"v": MESSAGE_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TileMessage:
        data = _load_object(text, "tile message")
        fields = {"job": str, "group": str, "tile": int, "input": str, "output": str, "model": str, "reply": str}
        return cls(**_take(data, fields, "tile message"))


@dataclass(frozen=True)
class TileResult:
    """A worker's report on one tile; ``attempt`` is the SQS receive count of the tile message."""

    job: str
    group: str
    tile: int
    status: Literal["done", "failed"]
    attempt: int
    worker: str
    error: str = ""
    # Seconds of model compute spent on this tile (its share of the batch), for timing summaries.
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        check_job_id(self.job)
        check_group(self.group)
        if self.status not in (RESULT_DONE, RESULT_FAILED):
            raise MessageError(f"result status must be 'done' or 'failed', got {self.status!r}")

    @property
    def name(self) -> str:
        return tile_name(self.group, self.tile)

    def to_json(self) -> str:
        return json.dumps({"v": MESSAGE_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TileResult:
        data = _load_object(text, "tile result")
        data = dict(data)
        compute_s = data.pop("compute_s", 0.0)
        if isinstance(compute_s, bool) or not isinstance(compute_s, (int, float)) or compute_s < 0:
            raise MessageError(f"tile result field 'compute_s' must be a number >= 0, got {compute_s!r}")
        fields = {"job": str, "group": str, "tile": int, "status": str, "attempt": int, "worker": str, "error": str}
        return cls(**_take(data, fields, "tile result"), compute_s=float(compute_s))
