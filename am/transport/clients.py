"""Build boto3 clients for one endpoint: real AWS, or the local S3/SQS endpoint of the local backend.

Each process (and each thread that wants its own) makes clients from a :class:`ClientFactory`;
boto3 clients are thread-safe once built, sessions are not, so every call here starts from a
fresh session::

    clients = ClientFactory(endpoint_url="http://127.0.0.1:5000")   # "" means real AWS
    s3, sqs = clients.s3(), clients.sqs()

Credentials come from boto3's standard chain (environment, profile, task or instance role).
Only for a loopback endpoint with nothing configured are placeholder keys used: the local
endpoint accepts any key, and a laptop should not need an AWS account to run the pipeline.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config

from am.errors import ConfigError
from am.settings import region_problem

log = logging.getLogger(__name__)

# Enough HTTP connections for Storage's transfer threads plus the odd SQS call.
MAX_POOL_CONNECTIONS = 32
CONNECT_TIMEOUT_S = 10
# Longer than SQS's 20 s long poll, or every idle receive would end in a read timeout.
READ_TIMEOUT_S = 60
# botocore's own quick retries; am.transport.retry adds the longer, logged policy on top.
BOTOCORE_MAX_ATTEMPTS = 3
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Placeholder keys for a loopback endpoint only; moto's server accepts any key.
_LOCAL_ACCESS_KEY = "am-segm-local"
_LOCAL_SECRET_KEY = "am-segm-local"  # not a secret: the local endpoint checks nothing
# Credential providers that ask the network (instance metadata); pointless for a loopback endpoint.
_NETWORK_PROVIDERS = ("iam-role", "container-role")
# Service models are large JSON files; sessions share one loader (and its cache) so that only
# the first client of a service in a process pays for parsing them.
_loader: botocore.loaders.Loader | None = None
_loader_lock = threading.Lock()


def _shared_loader(core: botocore.session.Session) -> botocore.loaders.Loader:
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader(core.get_config_variable("data_path"))
        return _loader


def is_loopback(endpoint_url: str) -> bool:
    """True when the endpoint is this machine (the local backend), where credentials do not matter."""
    return bool(endpoint_url) and (urlsplit(endpoint_url).hostname or "") in LOOPBACK_HOSTS


@dataclass(frozen=True)
class ClientFactory:
    """Where S3, SQS, ECS and CloudFormation live; builds a client for each on demand.

    ``endpoint_url`` empty means the real AWS endpoints of ``region``; otherwise every client
    talks to that URL (the local backend's embedded endpoint, or a compatible service).
    """

    endpoint_url: str = ""
    region: str = "us-east-1"

    def __post_init__(self) -> None:
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint URL {self.endpoint_url!r} must start with http:// or https://")
        if problem := region_problem(self.region, name="region"):
            raise ConfigError(f"{problem} (AM_REGION, --region or the settings' region)")

    def s3(self) -> Any:
        return self._client("s3")

    def sqs(self) -> Any:
        return self._client("sqs")

    def ecs(self) -> Any:
        return self._client("ecs")

    def cloudformation(self) -> Any:
        return self._client("cloudformation")

    def autoscaling(self) -> Any:
        return self._client("application-autoscaling")

    def config(self) -> Config:
        """Pool size, timeouts and botocore retries shared by every client."""
        return Config(
            region_name=self.region,
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "max_attempts": BOTOCORE_MAX_ATTEMPTS},
            tcp_keepalive=True,
        )

    def _client(self, service: str) -> Any:
        try:
            return self._new_client(service)
        except (botocore.exceptions.ProfileNotFound, botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.ConfigParseError, botocore.exceptions.InvalidConfigError) as exc:
            # The AWS configuration of this machine, not am-segm's: said in one line with where to look,
            # where botocore would print a traceback through the first client made.
            raise ConfigError(f"cannot set up the AWS {service} client: {exc}; check AWS_PROFILE, ~/.aws/config "
                              "and ~/.aws/credentials, and that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are "
                              "set together") from exc

    def _new_client(self, service: str) -> Any:
        core = botocore.session.Session()
        core.register_component("data_loader", _shared_loader(core))
        if is_loopback(self.endpoint_url) and not _has_local_credentials(core):
            core.set_credentials(_LOCAL_ACCESS_KEY, _LOCAL_SECRET_KEY)
        session = boto3.session.Session(botocore_session=core, region_name=self.region)
        kwargs: dict[str, Any] = {"config": self.config()}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        log.debug("new %s client for %s (%s)", service, self.endpoint_url or "AWS", self.region)
        return session.client(service, **kwargs)


def _has_local_credentials(core: botocore.session.Session) -> bool:
    """Whether credentials are configured without asking instance metadata, which may hang off AWS."""
    resolver = core.get_component("credential_provider")
    for name in _NETWORK_PROVIDERS:
        resolver.remove(name)
    return resolver.load_credentials() is not None


__all__ = ["ClientFactory", "is_loopback"]
