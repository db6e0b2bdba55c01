"""Queue message contracts between the orchestrator and the workers.

A :class:`TileMessage` asks a worker to segment a few tiles of one group, stored together in
one object (:mod:`am.tilepack`); a :class:`TileResult` is the worker's report on them, back on
the job's results queue. Carrying several tiles per message and per object divides the SQS and
S3 requests per tile by the bundle size, which is what keeps a fast GPU, or a laptop hosting
the embedded endpoint, busy with the model rather than with requests. Both are frozen and
validated on the way in, because a worker must never follow a key outside its job's prefix,
whoever wrote the message::

    msg = TileMessage(job="j1", group="g", tiles=(7, 8), input="j1/g/0007.npy",
                      output="j1/g/0007.npy", model="s3://m/model.pt", reply=url)
    assert TileMessage.from_json(msg.to_json()) == msg
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from am.errors import MessageError

MESSAGE_VERSION = 2
# Most tiles one message may name (an object of 256 tiles of 512 px is 64 MiB).
MAX_TILES_PER_MESSAGE = 256
# Test-time augmentation a message may ask for (am.model.tta): none, the tile and its half turn,
# the four flips, or the eight symmetries of the square. "off" is left out of the JSON, so such
# messages read the same as those of builds without the field.
TTA_MODES = ("off", "rot180", "flips", "d4")
# An image smaller than a tile is reflect-padded up to the tile; ``valid`` then names the (rows,
# columns) of each of its tiles that are image, so that the worker makes the mask of that part
# alone. Left out of the JSON for whole tiles, as "tta" is when off. A build without the field
# refuses such a message as having an unknown field, rather than segmenting it the padded way.
VALID_FIELD = "valid"

# Job ids and group names become S3 key segments and queue-name suffixes.
JOB_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
GROUP_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# An SQS queue name allows 80 characters of [A-Za-z0-9_-].
QUEUE_URL_PATTERN = re.compile(r"^https?://[^\s/]+(/[^\s/]+)*/[A-Za-z0-9_-]{1,80}$")

RESULT_DONE = "done"
RESULT_FAILED = "failed"


def tiles_key(job: str, group: str, tiles: tuple[int, ...] | list[int]) -> str:
    """The object key of a message's tiles (input bucket) and of their masks (output bucket).

    Named after the first tile: a tile is sent once per job, so no two messages share a key.
    """
    return f"{job}/{group}/{tiles[0]:04d}.npy"


def tile_name(group: str, tile: int) -> str:
    """How a tile is named to people: in logs, errors and the summary."""
    return f"{group}/{tile:04d}"


def tiles_label(group: str, tiles: tuple[int, ...]) -> str:
    """How a message's tiles are named in logs: ``g/0007`` or ``g/0007 (+3 more)``."""
    more = f" (+{len(tiles) - 1} more)" if len(tiles) > 1 else ""
    return f"{tile_name(group, tiles[0])}{more}"


def check_tiles(tiles: Any, kind: str) -> tuple[int, ...]:
    """1..MAX_TILES_PER_MESSAGE distinct tile numbers >= 0, as a tuple."""
    if not isinstance(tiles, (list, tuple)) or not 1 <= len(tiles) <= MAX_TILES_PER_MESSAGE:
        raise MessageError(f"{kind} must name 1 to {MAX_TILES_PER_MESSAGE} tiles in a list, got {tiles!r:.200}")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tiles):
        raise MessageError(f"{kind} tile numbers must be integers >= 0, got {tiles!r:.200}")
    if len(set(tiles)) != len(tiles):
        raise MessageError(f"{kind} names a tile twice: {tiles!r:.200}")
    return tuple(tiles)


def check_valid_extent(valid: Any, kind: str) -> tuple[int, int] | None:
    """None, or the ``[rows, columns]`` of a tile that are image, both integers >= 1, as a tuple.

    Whether the extent fits the tiles is known only once they are read: the worker checks that.
    """
    if valid is None:
        return None
    if (not isinstance(valid, (list, tuple)) or len(valid) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in valid)):
        raise MessageError(f"{kind} field {VALID_FIELD!r} must be [rows, columns] of the tiles that are image, "
                           f"two integers >= 1, got {valid!r:.100}; leave it out for tiles that are all image")
    return int(valid[0]), int(valid[1])


def new_job_id() -> str:
    """Sortable by start time, unique enough for concurrent jobs on one deployment."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# Each job's results queue is named <results_queue_prefix>-<job id>, so settings need its length.
JOB_ID_LENGTH = len(new_job_id())


def check_job_id(job: str) -> str:
    """``job`` if it can name S3 prefixes and an SQS queue; a job id comes from messages, so it is checked."""
    if not isinstance(job, str) or not JOB_ID_PATTERN.match(job):
        raise MessageError(
            f"job id {job!r} is not valid: use 1-63 lower-case letters, digits and '-'"
        )
    return job


def check_group(group: str) -> str:
    """``group`` if it is safe as one segment of an S3 key and a folder name."""
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


def model_in_tile_bucket(model: str, *, input_bucket: str, output_bucket: str) -> str | None:
    """Why ``model`` may not be read as a checkpoint, or None: an ``s3://`` URI in the input or output bucket.

    Those buckets hold every job's tiles and masks, never checkpoints (a stack's are under
    ``s3://<ModelBucket>/models/``), and a worker may read the whole input bucket: a message naming
    another job's tile as its model would have the worker download it, and quote its first bytes in
    the failure it reports, across the job prefixes no other field may leave (:func:`check_key_in_job`).
    """
    if not model.startswith("s3://"):
        return None
    bucket = model[len("s3://"):].partition("/")[0]
    if bucket not in (input_bucket, output_bucket):
        return None
    which = "input" if bucket == input_bucket else "output"
    return (f"it lies in the workers' {which} bucket {bucket}, which holds tiles and masks, not checkpoints: "
            "upload the checkpoint under models/ in the stack's model bucket (make upload-model) and pass that URI")


def _load_object(text: str | bytes, kind: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        # RecursionError: arrays nested 100000 deep fit in an SQS message and exhaust the parser's stack.
        raise MessageError(f"{kind} is not JSON ({type(exc).__name__}: {str(exc)[:100]}): "
                           f"{str(text)[:200]!r}") from exc
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
        if typ is str:
            _check_text(value, kind, name)
        if typ is tuple:
            value = check_tiles(value, kind)
        out[name] = value
    return out


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: str, kind: str, name: str) -> None:
    """Refuse text the other side could not read back.

    A lone surrogate (JSON's "\\ud800", or Python's stand-in for a byte of a non-UTF-8 file
    name) is no character: no S3 key or path can hold it, and a message carrying one would be
    rejected by every worker. Checked where messages are built as well as where they are read,
    so that one the orchestrator can send is one a worker can take.
    """
    if not _encodable(value):
        raise MessageError(f"{kind} field {name!r} is not valid UTF-8 text, got {value!r:.200}")


def readable_text(text: str) -> str:
    """``text`` with anything that is not UTF-8 written as backslash escapes, for reports of errors."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _NamedTiles:
    """How the tiles a message or result speaks of are named to people; both carry a group and tiles."""

    group: str
    tiles: tuple[int, ...]

    @property
    def name(self) -> str:
        return tiles_label(self.group, self.tiles)

    @property
    def names(self) -> list[str]:
        """Each tile's name, in message order."""
        return [tile_name(self.group, t) for t in self.tiles]


@dataclass(frozen=True)
class TileMessage(_NamedTiles):
    """Tiles of one group to segment: the object holding them, where to write their masks, whom to tell."""

    job: str
    group: str
    tiles: tuple[int, ...]
    input: str
    output: str
    model: str
    reply: str
    tta: str = "off"
    # Rows and columns of every tile that are image (the group's image is smaller than a tile and the
    # rest is padding); None: the tiles are all image.
    valid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_job_id(self.job)
        check_group(self.group)
        object.__setattr__(self, "tiles", check_tiles(self.tiles, "tile message"))
        object.__setattr__(self, "valid", check_valid_extent(self.valid, "tile message"))
        if self.tta not in TTA_MODES:
            raise MessageError(f"tile message field 'tta' must be one of {', '.join(TTA_MODES)}, got {self.tta!r:.50}")
        for name in ("input", "output", "model", "reply"):
            _check_text(getattr(self, name), "tile message", name)
        check_key_in_job(self.input, self.job, field="input")
        check_key_in_job(self.output, self.job, field="output")
        if not self.model:
            raise MessageError("model must name a checkpoint path or s3:// URI")
        if not QUEUE_URL_PATTERN.match(self.reply) or not self.reply.endswith(f"-{self.job}"):
            raise MessageError(f"reply queue {self.reply!r} is not the results queue of job {self.job!r}")

    def to_json(self) -> str:
        data = asdict(self)
        if data["tta"] == "off":
            del data["tta"]
        if data[VALID_FIELD] is None:
            del data[VALID_FIELD]
        return json.dumps({"v": MESSAGE_VERSION, **data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TileMessage:
        data = dict(_load_object(text, "tile message"))
        tta = data.pop("tta", "off")
        if not isinstance(tta, str):
            raise MessageError(f"tile message field 'tta' must be a string, got {tta!r:.50}")
        if VALID_FIELD in data and data[VALID_FIELD] is None:
            raise MessageError(f"tile message field {VALID_FIELD!r} is null; leave it out for tiles that are all image")
        valid = check_valid_extent(data.pop(VALID_FIELD, None), "tile message")
        fields = {"job": str, "group": str, "tiles": tuple, "input": str, "output": str, "model": str, "reply": str}
        return cls(**_take(data, fields, "tile message"), tta=tta, valid=valid)


@dataclass(frozen=True)
class TileResult(_NamedTiles):
    """A worker's report on the tiles of one message; ``attempt`` is that message's SQS receive count."""

    job: str
    group: str
    tiles: tuple[int, ...]
    status: Literal["done", "failed"]
    attempt: int
    worker: str
    error: str = ""
    # Seconds of model compute spent on these tiles (their share of the batch), for timing summaries.
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        check_job_id(self.job)
        check_group(self.group)
        object.__setattr__(self, "tiles", check_tiles(self.tiles, "tile result"))
        if self.status not in (RESULT_DONE, RESULT_FAILED):
            raise MessageError(f"result status must be 'done' or 'failed', got {self.status!r}")
        # An error's text may quote a file name that is not UTF-8; the report must still be readable.
        object.__setattr__(self, "error", readable_text(self.error))
        object.__setattr__(self, "worker", readable_text(self.worker))

    def to_json(self) -> str:
        return json.dumps({"v": MESSAGE_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TileResult:
        data = _load_object(text, "tile result")
        data = dict(data)
        compute_s = data.pop("compute_s", 0.0)
        if isinstance(compute_s, bool) or not isinstance(compute_s, (int, float)) or compute_s < 0:
            raise MessageError(f"tile result field 'compute_s' must be a number >= 0, got {compute_s!r}")
        fields = {"job": str, "group": str, "tiles": tuple, "status": str, "attempt": int, "worker": str,
                  "error": str}
        return cls(**_take(data, fields, "tile result"), compute_s=float(compute_s))
