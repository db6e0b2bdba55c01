"""Settings for the orchestrator, built once at the command-line edge and passed down.

Each key resolves as: command-line option, then environment variable ``AM_<KEY>``, then the
YAML config file, then the default below. Library modules never read the environment; only
:func:`load_settings`, called by the command-line modules, does::

    settings = load_settings({"workers": 4}, environ=os.environ, config_path=None)

A refused value is reported with where it came from. When a command-line option is at fault the
error is an :class:`OptionError`, which the command-line edge turns into exit code 2 (bad usage,
like argparse's own errors); a value from the environment or a config file is not a usage
error and exits 1, as any other :class:`~am.errors.ConfigError` does.

AWS credentials are never settings: boto3's standard chain provides them.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from am.errors import ConfigError
from am.messages import JOB_ID_LENGTH, MAX_TILES_PER_MESSAGE, TTA_MODES

log = logging.getLogger(__name__)

# What botocore accepts as a region name (a host name label); anything else fails in every client
# with a traceback, so settings and the worker refuse it first.
REGION_PATTERN = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")


# S3's rules for a bucket name, and SQS's for a queue name (am-segm's queues are standard ones, never
# .fifo). A name that breaks them failed only in botocore, after the endpoint had started, in an error
# that named no setting.
BUCKET_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_NAME_RULE = ("an S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending "
                    "with a letter or digit")
MAX_QUEUE_NAME = 80
QUEUE_NAME_PATTERN = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_QUEUE_NAME}}}$")
QUEUE_NAME_RULE = f"an SQS queue name: 1 to {MAX_QUEUE_NAME} letters, digits, hyphens and underscores"


# Where the region comes from when neither --region's setting (region, AM_REGION) nor the config file gives it.
AWS_REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


def region_problem(region: str, *, name: str) -> str | None:
    """Why ``region`` (set as ``name``) cannot be an AWS region name, or None."""
    if isinstance(region, str) and REGION_PATTERN.match(region):
        return None
    return f"{name} = {region!r} is not an AWS region name: give one such as us-east-1 or eu-west-1"


# The largest tile side. The shipped model's forward pass in fp32 on a CPU takes about 0.9 GB more
# for one 2048 px tile than for a 512 px one, and 3.9 GB more for one of 4096 px; a worker batches
# 4 tiles on a CPU.
MAX_TILE_SIZE = 4096

BACKENDS = ("local", "aws")
AWS_LAUNCH_MODES = ("run_task", "service")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
COMMAND_LINE = "the command line"
# ``scale: auto`` reads each image's mark pitch as it is prepared and picks the factor then (am.pitch).
AUTO_SCALE = "auto"
SCALE_RANGE = (0.1, 10.0)


class SettingError(ConfigError):
    """A setting's value is refused; ``keys`` are the settings the check involves, so that
    :func:`load_settings` can say where each came from and whether the command line is at fault."""

    def __init__(self, message: str, keys: tuple[str, ...]) -> None:
        super().__init__(message)
        self.keys = keys


class OptionError(ConfigError):
    """A value given on the command line is refused: bad usage, exit code 2 like argparse's errors."""


@dataclass(frozen=True)
class Settings:
    """Every orchestrator setting; the config template (:func:`config_template`) says what each one means."""

    backend: str = "local"
    workers: int = 2
    model: str = ""
    log_level: str = "INFO"
    # Tiling and preprocessing.
    tile_size: int = 512
    tile_overlap: int = 128
    norm_low_pct: float = 1.0
    norm_high_pct: float = 99.0
    scale: float | str = 1.0
    # Test-time augmentation the workers apply to every tile of a job (am.model.tta).
    tta: str = "off"
    # Worker behaviour, passed to every worker the orchestrator starts.
    batch_size: int = 0
    idle_exit_s: float = 60.0
    worker_threads: int = 0
    # Job control.
    visibility_timeout_s: int = 120
    max_receive_count: int = 3
    timeout_base_s: float = 300.0
    timeout_per_tile_s: float = 10.0
    transfer_threads: int = 16
    max_tiles_in_flight: int = 0
    tiles_per_message: int = 0
    keep_job_data: bool = False
    # Endpoint and resources. Empty endpoint_url means the real AWS endpoints.
    endpoint_url: str = ""
    region: str = "us-east-1"
    input_bucket: str = "am-segm-input"
    output_bucket: str = "am-segm-output"
    queue_name: str = "am-segm-tiles"
    dead_letter_queue_name: str = "am-segm-tiles-dlq"
    results_queue_prefix: str = "am-segm-results"
    # AWS backend only.
    stack_name: str = ""
    ecs_cluster: str = ""
    ecs_task_definition: str = ""
    ecs_service: str = ""
    ecs_capacity_provider: str = ""
    ecs_subnets: str = ""
    ecs_security_groups: str = ""
    aws_launch: str = "run_task"
    aws_max_tasks: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.log_level, str):
            # AM_LOG_LEVEL=debug or log_level: info in a config file mean what they say.
            object.__setattr__(self, "log_level", self.log_level.upper())
        _require(self.backend in BACKENDS, "backend", self.backend, f"one of {', '.join(BACKENDS)}")
        _require(self.workers >= 1, "workers", self.workers, "at least 1")
        _require(self.log_level in LOG_LEVELS, "log_level", self.log_level, f"one of {', '.join(LOG_LEVELS)}")
        _require(64 <= self.tile_size <= MAX_TILE_SIZE and self.tile_size % 32 == 0, "tile_size", self.tile_size,
                 f"a multiple of 32 from 64 (the U-Net halves it five times) to {MAX_TILE_SIZE} (one model call "
                 "holds a batch of tiles; the model was trained on 512)")
        _require(0 <= self.tile_overlap <= self.tile_size // 2, "tile_overlap", self.tile_overlap,
                 f"between 0 and half the tile size ({self.tile_size // 2})", also=("tile_size",))
        _require(0 <= self.norm_low_pct < self.norm_high_pct <= 100, "norm_low_pct/norm_high_pct",
                 (self.norm_low_pct, self.norm_high_pct), "0 <= low < high <= 100")
        _require(self.scale == AUTO_SCALE or (not isinstance(self.scale, str)
                                              and SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]),
                 "scale", self.scale, f"between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}, or {AUTO_SCALE}")
        _require(self.tta in TTA_MODES, "tta", self.tta, f"one of {', '.join(TTA_MODES)}")
        _require(self.batch_size >= 0, "batch_size", self.batch_size, ">= 0 (0 picks one for the device)")
        _require(math.isfinite(self.idle_exit_s) and self.idle_exit_s > 0, "idle_exit_s", self.idle_exit_s,
                 "a finite number of seconds > 0 (for workers that never leave by themselves, a long one "
                 "such as 86400)")
        _require(self.worker_threads >= 0, "worker_threads", self.worker_threads, ">= 0 (0 shares the cores)")
        if self.backend == "local":
            # Local workers run on this machine: far beyond its CPUs the process runs out of threads and
            # the job fails as a network error of the embedded endpoint. ECS tasks have CPUs of their own.
            from am.cli import threads_problem  # am.cli imports this module

            _require(threads_problem(self.worker_threads, option="worker_threads") is None, "worker_threads",
                     self.worker_threads, f"at most this machine's {os.cpu_count()} CPUs for local workers (0 "
                     "shares the cores among them)")
        _require(30 <= self.visibility_timeout_s <= 43200, "visibility_timeout_s", self.visibility_timeout_s,
                 "between 30 and 43200 seconds (the SQS limit)")
        _require(1 <= self.max_receive_count <= 1000, "max_receive_count", self.max_receive_count,
                 "between 1 and 1000 (the SQS limit)")
        _require(all(math.isfinite(s) and s > 0 for s in (self.timeout_base_s, self.timeout_per_tile_s)),
                 "timeout_base_s/timeout_per_tile_s", (self.timeout_base_s, self.timeout_per_tile_s),
                 "finite numbers of seconds > 0")
        _require(self.max_tiles_in_flight >= 0, "max_tiles_in_flight", self.max_tiles_in_flight,
                 ">= 0 (0: automatic, a window per local worker, no limit on AWS)")
        _require(0 <= self.tiles_per_message <= MAX_TILES_PER_MESSAGE, "tiles_per_message", self.tiles_per_message,
                 f"between 0 and {MAX_TILES_PER_MESSAGE} (0: automatic, 8 locally, 32 on AWS)")
        _require(1 <= self.transfer_threads <= 128, "transfer_threads", self.transfer_threads, "between 1 and 128")
        _require(self.aws_launch in AWS_LAUNCH_MODES, "aws_launch", self.aws_launch,
                 f"one of {', '.join(AWS_LAUNCH_MODES)}")
        _require(self.aws_max_tasks >= 1, "aws_max_tasks", self.aws_max_tasks, "at least 1")
        _require(region_problem(self.region, name="region") is None, "region", self.region,
                 "an AWS region name such as us-east-1")
        if self.endpoint_url:
            _require(self.endpoint_url.startswith(("http://", "https://")), "endpoint_url", self.endpoint_url,
                     "an http:// or https:// URL")
        # A tile and its mask share one key: in one bucket the mask overwrites the tile, and a tile
        # tried again would be read from its own packed mask.
        _require(self.input_bucket != self.output_bucket, "input_bucket/output_bucket",
                 (self.input_bucket, self.output_bucket), "two different buckets (tiles and masks use the same keys)")
        for key in ("input_bucket", "output_bucket"):
            value = getattr(self, key)
            _require(isinstance(value, str) and BUCKET_NAME_PATTERN.match(value) is not None, key, value,
                     BUCKET_NAME_RULE)
        for key in ("queue_name", "dead_letter_queue_name"):
            value = getattr(self, key)
            _require(isinstance(value, str) and QUEUE_NAME_PATTERN.match(value) is not None, key, value,
                     QUEUE_NAME_RULE)
        # Each job's results queue is named <prefix>-<job id>: the prefix has what SQS leaves of 80.
        longest = MAX_QUEUE_NAME - 1 - JOB_ID_LENGTH
        _require(isinstance(self.results_queue_prefix, str) and len(self.results_queue_prefix) <= longest
                 and QUEUE_NAME_PATTERN.match(self.results_queue_prefix) is not None, "results_queue_prefix",
                 self.results_queue_prefix, f"1 to {longest} letters, digits, hyphens and underscores (each job's "
                 f"results queue is named <prefix>-<job id>, the job id {JOB_ID_LENGTH} characters, and SQS "
                 f"allows {MAX_QUEUE_NAME})")
        # Tiles given up on must leave the tile queue, not come back to it.
        _require(self.queue_name != self.dead_letter_queue_name, "queue_name/dead_letter_queue_name",
                 (self.queue_name, self.dead_letter_queue_name), "two different queues")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def job_timeout_s(self, n_tiles: int, *, workers: int | None = None) -> float:
        """The whole job's budget grows with its size, so big images are not cut off at a fixed limit.

        ``workers`` is how many workers really share the tiles, where the launcher can tell: fewer
        than the setting where some could not start (ECS without capacity) or died at start, and a
        budget shared among workers that never ran would end the job too early. None: the setting.
        """
        sharing = self.workers if workers is None else workers
        return self.timeout_base_s + self.timeout_per_tile_s * n_tiles / max(1, sharing)


def _require(ok: bool, key: str, value: Any, allowed: str, *, also: tuple[str, ...] = ()) -> None:
    """Refuse ``key`` (``a/b`` for a pair); ``also``: other settings the rule depends on."""
    if not ok:
        raise SettingError(f"setting {key} = {value!r} is not allowed: it must be {allowed}",
                           (*key.split("/"), *also))


def scale_value(raw: Any) -> float | str:
    """A resize factor, or ``auto`` (any case): the type of the ``scale`` setting and of ``--scale``."""
    if isinstance(raw, str) and raw.strip().lower() == AUTO_SCALE:
        return AUTO_SCALE
    if isinstance(raw, bool):
        raise ValueError(f"expected a number or {AUTO_SCALE}")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number or {AUTO_SCALE}") from None


def _coerce(key: str, raw: Any, typ: Any, source: str) -> Any:
    """Turn a string from the environment or a YAML scalar into the setting's type."""
    try:
        if typ is scale_value:
            return scale_value(raw)
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected an integer")
            return int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if raw is None:
            return ""
        if isinstance(raw, bool):
            # YAML 1.1 reads a bare off/on (tta: off) as a boolean; the user meant the word.
            return "on" if raw else "off"
        if isinstance(raw, (dict, list)):
            raise ValueError("expected a single value")
        return str(raw)
    except (TypeError, ValueError) as exc:
        name = "scale" if typ is scale_value else typ.__name__
        raise ConfigError(f"{source}: {key} = {raw!r} is not a valid {name} ({exc})") from exc


# Shipped inside the package (config/config.yml.template in the repository links to it), so that an
# installed am-segm can still show it: the errors below point to it.
CONFIG_TEMPLATE = Path(__file__).with_name("config.yml.template")
TEMPLATE_HINT = "write the template with python -m am.pipeline --config-template > config.yml and edit it"


def config_template() -> str:
    """The commented config file of every key at its default, as shipped with this version."""
    return CONFIG_TEMPLATE.read_text(encoding="utf-8")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "float | str": scale_value}


def setting_types() -> dict[str, Any]:
    """Each setting's Python type, so that text from the environment or a YAML file is parsed alike."""
    return {f.name: _TYPES[f.type] if isinstance(f.type, str) else f.type for f in fields(Settings)}


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice: plain YAML keeps the last one silently, so a
    setting changed near the top of a file would be undone by an old line further down."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in (<<: *anchor) may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                break  # an unhashable key: the safe loader's own error names it
            if key in seen:
                raise _DuplicateKey(f"key {key} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                    "keep one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML config file of flat ``key: value`` pairs; unknown keys are errors, not ignored."""
    return _read_config(path)[0]


def _key_lines(text: str) -> dict[str, int]:
    """The line (from 1) each top-level key of a YAML mapping is on, so messages can point at it."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}


def _read_config(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's settings, and where each was set (``config file PATH line N``)."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a YAML file of 'key: value' pairs "
                          f"({TEMPLATE_HINT})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; {TEMPLATE_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} cannot be read as YAML: {exc}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold 'key: value' pairs, not a {type(data).__name__}")
    known = setting_types()
    lines = _key_lines(text)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        where = ", ".join(f"{k} (line {lines[k]})" if k in lines else k for k in unknown)
        raise ConfigError(f"config file {path} has unknown key(s) {where}; "
                          "the template (python -m am.pipeline --config-template) lists the valid ones")
    sources = {key: f"config file {path}" + (f" line {lines[key]}" if key in lines else "") for key in data}
    return {key: _coerce(key, value, known[key], sources[key]) for key, value in data.items()}, sources


# AM_* variables that are no setting: the config file's path, what workers and servers read alone
# (am/worker/config.py, am.serve), and the Makefile's switch for a GPU machine's own python.
OTHER_AM_VARIABLES = frozenset({"AM_CONFIG", "AM_QUEUE_URL", "AM_THREADS", "AM_PRECISION", "AM_COMPILE",
                                "AM_POSTPROCESS", "AM_STOP_TIMEOUT_S", "AM_MAX_BATCH_S", "AM_OUTAGE_PATIENCE_S",
                                "AM_WORKER_ID",
                                "AM_SYSTEM_PYTHON"})
_warned_unknown: set[str] = set()
# The least tile_overlap at which every flat area is blanked in the stitched mask: twice the side
# of am.model.flat.FLAT_SIDE (not imported: that would load torch with the settings). A pixel's
# own tile holds only tile_overlap / 2 pixels beyond it, and a flat square must lie in the tile.
FLAT_OVERLAP = 128
_warned_overlap: set[int] = set()


def unknown_am_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The AM_* variables in ``environ`` that nothing reads, each with the known name it most resembles."""
    known = {f"AM_{key.upper()}" for key in setting_types()} | OTHER_AM_VARIABLES
    return {name: next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)), None)
            for name in sorted(environ) if name.startswith("AM_") and name not in known}


def _warn_unknown_am_variables(environ: Mapping[str, str]) -> None:
    """A misspelt AM_BAKEND=aws would otherwise run on the local backend without a word; said once per name."""
    for name, near in unknown_am_variables(environ).items():
        if name not in _warned_unknown:
            _warned_unknown.add(name)
            log.warning("environment variable %s is no am-segm setting and is ignored%s", name,
                        f" (did you mean {near}?)" if near else "")


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Resolve settings: ``overrides`` (command line) > ``AM_<KEY>`` in ``environ`` > config file > default;
    ``region`` left unset by all of them comes from ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` where set.

    Raises :class:`OptionError` when a refused value, or one of the values a refused rule
    depends on, came from ``overrides``; :class:`~am.errors.ConfigError` otherwise. Either
    message says where each value at fault came from.
    """
    known = setting_types()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if environ is not None:
        _warn_unknown_am_variables(environ)
    if config_path is not None:
        from_file, sources = _read_config(Path(config_path))
        if from_file.get("region") == "":
            # The template's "region: ''": left to AWS_REGION or AWS_DEFAULT_REGION, else the default,
            # so that a copied template does not pin the region the AWS tools are set to elsewhere.
            del from_file["region"], sources["region"]
        values.update(from_file)
    for key, typ in known.items():
        env_key = f"AM_{key.upper()}"
        if environ is not None and env_key in environ:
            sources[key] = f"environment variable {env_key}"
            values[key] = _coerce(key, environ[env_key], typ, sources[key])
    if "region" not in sources and environ is not None:
        # The AWS tools' own variables (make deploy passes AWS_REGION): a stack deployed with them is
        # found without repeating the region as AM_REGION; region and AM_REGION still win.
        standard = next((name for name in AWS_REGION_VARIABLES if environ.get(name)), None)
        if standard is not None:
            sources["region"] = f"environment variable {standard}"
            values["region"] = _coerce("region", environ[standard], known["region"], sources["region"])
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            try:
                values[key] = _coerce(key, value, known[key], COMMAND_LINE)
            except ConfigError as exc:
                raise OptionError(f"{exc}; see --help") from exc
            sources[key] = COMMAND_LINE
    try:
        settings = Settings(**values)
    except SettingError as exc:
        raise _with_sources(exc, sources) from exc
    _warn_small_overlap(settings.tile_overlap, sources.get("tile_overlap"))
    return settings


def _warn_small_overlap(overlap: int, source: str | None) -> None:
    """A smaller overlap is allowed (tiles under 256 px have no other), but below FLAT_OVERLAP the
    tile that writes a pixel near a seam may hold under 64 px of the zero fill or glare around it,
    and the model's marks there stay; said once per value, not at every load."""
    if overlap >= FLAT_OVERLAP or overlap in _warned_overlap:
        return
    _warned_overlap.add(overlap)
    log.warning("tile_overlap %d%s is below %d: zero fill and glare within %d px of a seam between tiles "
                "may be marked (a 64 px flat square must lie in the tile that writes the pixel); "
                "set tile_overlap to %d or more, with tile_size at least %d, to blank them all",
                overlap, f" ({_where(source)})" if source else "", FLAT_OVERLAP, FLAT_OVERLAP // 2 - overlap // 2,
                FLAT_OVERLAP, 2 * FLAT_OVERLAP)


def _with_sources(exc: SettingError, sources: Mapping[str, str]) -> ConfigError:
    """``exc`` with where its values were set; an :class:`OptionError` when the command line set one."""
    first, *others = exc.keys
    where = ", ".join([f"{first} is set {_where(sources.get(first))}",
                       *(f"{key} {_where(sources.get(key))}" for key in others)])
    if any(sources.get(key) == COMMAND_LINE for key in exc.keys):
        return OptionError(f"{exc}; {where}; see --help")
    return ConfigError(f"{exc}; {where}")


def _where(source: str | None) -> str:
    if source is None:
        return "by default"
    return "on the command line" if source == COMMAND_LINE else f"in {source}"


def expand_home(text: str, *, what: str) -> Path:
    """``text`` as a path, a leading ``~`` or ``~user`` made that home folder.

    Where no home folder is known (HOME unset and no passwd entry, as in some containers, or no
    such user) Path.expanduser raises RuntimeError, a traceback for a mere path: refused here
    naming ``what`` (e.g. "config file ~/c.yml (--config)") and the way out.
    """
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise ConfigError(f"{what}: no home folder is known to expand {text.split('/', 1)[0]!r} in; give an "
                          "absolute path") from None


def config_path_from(cli_value: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file comes from --config, else AM_CONFIG; none is needed for the local backend.

    An AM_CONFIG naming no file is refused here, saying it came from AM_CONFIG: a variable left in a
    shell profile is otherwise a mystery "config file ... does not exist" on a command given none.
    A leading ``~`` is the home folder in either, as in --model: the shell expands it only at the
    start of a word, so ``--config=~/c.yml`` and a quoted ``AM_CONFIG="~/c.yml"`` reach us unexpanded.
    """
    if cli_value:
        return expand_home(cli_value, what=f"config file {cli_value} (--config)")
    value = environ.get("AM_CONFIG")
    if not value:
        return None
    path = expand_home(value, what=f"config file {value} (AM_CONFIG)")
    if not path.exists():
        raise ConfigError(f"config file {path}, named by the environment variable AM_CONFIG, does not exist; unset "
                          f"AM_CONFIG or point it at a config file ({TEMPLATE_HINT})")
    return path


__all__ = ["OptionError", "SettingError", "Settings", "config_path_from", "expand_home", "load_settings",
           "read_config_file", "setting_types"]
