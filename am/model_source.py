"""Which model a run's workers load, and whether that file is a checkpoint they can use.

Settled before any worker starts: a model every worker would fail on is named here with what is
wrong with it, not met later as "all workers stopped". The answer is a location (path or
``s3://`` URI) and an identity that changes with the weights, which ``meta.json`` records so that
a rerun with another model segments again::

    model, model_id = resolve_model(settings, cache_dir=cache_dir)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from pathlib import Path

from am.backends import check_model_object, stack_model_uri
from am.errors import CheckpointError, ConfigError
from am.files import file_sha256, write_atomic
from am.models import DEFAULT_MODEL
from am.settings import Settings, expand_home
from am.transport.clients import ClientFactory
from am.transport.storage import Storage, object_version

log = logging.getLogger(__name__)

# The orchestrator needs torch only to check a model file it has not checked before.
MODEL_CODE = Path(__file__).resolve().parent / "model"
# What check_checkpoint's verdict depends on, besides the file itself.
CHECKER_LIBRARIES = ("torch", "segmentation-models-pytorch", "timm")


def check_checkpoint(path: Path) -> None:
    """Refuse a model file that is not a usable checkpoint before any worker starts.

    Every worker would fail on it in the same way, and the user would see that only as "all
    workers stopped" with log tails; here the error names the file and what is wrong with it.
    Loading is safe (``weights_only=True``) and costs one read of the weights.
    """
    from am.model.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"model {path} cannot be used (set by --model, AM_MODEL or the config): {exc}") from exc


def _checker_fingerprint() -> str:
    """What a checkpoint check depends on besides the file: the libraries and the code that read and build it."""
    digest = hashlib.sha256()
    for dist in CHECKER_LIBRARIES:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{dist}={version}\n".encode())
    for source in checker_sources():
        digest.update(f"{source.name}\n".encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def checker_sources() -> list[Path]:
    """Every module of :mod:`am.model`: loading a checkpoint runs more of them than checkpoint.py and
    build.py (storage.py unpacks int8 weights, refine.py builds the refinement branch, and each may
    import others later). A list of the few that matter today would miss the next one, and a check
    remembered across a change to it would let every worker fail on a model taken as checked; hashing
    all of them costs a few milliseconds."""
    return sorted(MODEL_CODE.glob("*.py"))


def check_checkpoint_once(path: Path, model_id: str, *, cache_dir: Path) -> None:
    """:func:`check_checkpoint`, skipped when these very bytes already passed it with the same code.

    The check imports torch and builds the architecture: seconds of CPU that every run would
    spend before its first worker may start. Its answer depends only on the file (``model_id``
    is its SHA-256) and on the code and libraries that read it, so a pass is remembered in
    ``cache_dir`` under both. The marker is only a cache: a folder that cannot be read or written
    (a read-only home, HOME unset or odd) costs the check again next time, never the run.
    """
    marker = cache_dir / "checked-models" / f"{model_id}-{_checker_fingerprint()}"
    try:
        checked = marker.is_file()
    except OSError as exc:  # EACCES on a folder above it: as good as no marker
        log.debug("cannot look for %s (%s); checking the model", marker, exc)
        checked = False
    if checked:
        log.debug("model %s passed the checkpoint check before (%s)", path, marker)
        return
    check_checkpoint(path)
    try:
        write_atomic(marker, b"")
    except OSError as exc:
        log.warning("model %s passed the checkpoint check, but %s cannot be written to remember that (%s): the next "
                    "run checks it again (set XDG_CACHE_HOME to a writable folder to spare it that)", path, cache_dir,
                    exc)


def resolve_model(settings: Settings, *, cache_dir: Path) -> tuple[str, str]:
    """The model workers load (path or s3:// URI) and an identity that changes when its weights do.

    Every tile message names the model as text, so a path that is not UTF-8 (a Latin-1 byte in a
    file or folder name) is refused here: the workers would reject every message that carried it.
    """
    model, model_id = _resolve_model(settings, cache_dir=cache_dir)
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"model path {model!r} is not valid UTF-8 (a byte of another encoding in a file or folder "
                          "name): tile messages carry it as text, so rename the file or its folder") from None
    return model, model_id


def _resolve_model(settings: Settings, *, cache_dir: Path) -> tuple[str, str]:
    """See :func:`resolve_model`.

    On the aws backend the workers read the model from S3, never from this machine: an unset
    model is the stack's ModelUri output (where ``make upload-model`` puts it), and a local
    file is refused before torch is imported to check it. On the local backend an s3:// model is
    refused before anything starts: its embedded endpoint exists only during the run and holds no model.
    """
    if settings.model.startswith("s3://"):
        if settings.backend != "aws":
            # The local backend's embedded endpoint exists only during the run: nothing can be uploaded to it.
            why = ("they load a local checkpoint file" if settings.endpoint_url
                   else "its embedded S3 endpoint is empty and lives only during the run")
            raise ConfigError(f"model {settings.model} is an S3 URI, which the {settings.backend} backend's workers "
                              f"do not read ({why}): use --backend aws for S3 models, or pass a local checkpoint "
                              "file (.pt)")
        return settings.model, s3_model_id(settings, settings.model)
    if settings.backend == "aws":
        if settings.model:
            raise ConfigError(f"model {settings.model!r} is a local file, which ECS workers cannot read: upload it "
                              "(make upload-model MODEL=path.pt) and pass its s3:// URI, or leave model unset to "
                              "use the stack's ModelUri")
        uri = stack_model_uri(settings)
        log.info("model: %s (the stack's ModelUri output)", uri)
        return uri, s3_model_id(settings, uri)
    if settings.model:
        path = expand_home(settings.model, what=f"model {settings.model}")
        if path.is_dir():
            raise ConfigError(f"model {path} is a folder, not a checkpoint file: pass the .pt file itself"
                              f"{_checkpoints_in(path)} (set by --model, AM_MODEL or the config)")
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist; pass a checkpoint path or an s3:// URI")
        model_id = file_sha256(path)
        check_checkpoint_once(path, model_id, cache_dir=cache_dir)
        return str(path.resolve()), model_id
    if DEFAULT_MODEL.is_file():
        return str(DEFAULT_MODEL), file_sha256(DEFAULT_MODEL)
    from am.model.build import write_untrained_checkpoint

    untrained = cache_dir / "untrained-default.pt"
    if not untrained.is_file():
        # Unlike a check's marker, this file is what the workers load: without it there is no model.
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_untrained_checkpoint(untrained, seed=0)
        except OSError as exc:
            raise ConfigError(f"no trained model is installed ({DEFAULT_MODEL} missing) and the untrained stand-in "
                              f"cannot be written to {cache_dir} ({exc}): pass --model with a checkpoint, or set "
                              "XDG_CACHE_HOME to a writable folder") from exc
    log.warning("no trained model is installed (%s missing): running an UNTRAINED model, masks are meaningless",
                DEFAULT_MODEL)
    return str(untrained), file_sha256(untrained)


def s3_model_id(settings: Settings, uri: str) -> str:
    """``uri`` and the version of the object now behind it (its ETag, else its upload time).

    ``make upload-model`` writes every checkpoint to the same key (the stack's ModelUri): with the
    URI alone as the identity, a rerun after an upload would reuse masks of the weights it replaced.
    """
    clients = ClientFactory(endpoint_url=settings.endpoint_url, region=settings.region)
    head = check_model_object(Storage(clients.s3(), threads=1), uri)
    version = object_version(head)
    if not version:
        raise ConfigError(f"model {uri}: S3 reports neither an ETag nor a LastModified time for it, so a rerun "
                          "could not tell whether the checkpoint changed; use a store that reports them")
    return f"{uri}@{version}"


def _checkpoints_in(folder: Path) -> str:
    """Where to point --model instead of ``folder``: a .pt file directly in it, if it holds any."""
    found = sorted(p for p in folder.glob("*.pt") if p.is_file())
    if not found:
        return " (this folder holds no .pt file)"
    more = f" or one of the {len(found) - 1} other .pt file(s) there" if len(found) > 1 else ""
    return f", e.g. --model {found[0]}{more}"
