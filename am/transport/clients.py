"""Build boto3 clients for one endpoint: real AWS, or the local S3/SQS endpoint of the local backend.

Each process (and each thread that wants its own) makes clients from a :class:`ClientFactory`;
boto3 clients are thread-safe once built, sessions are not, so every call here starts from a
fresh session::

    clients = ClientFactory(endpoint_url="http://127.0.0.1:5000")   # "" means real AWS
    s3, sqs = clients.s3(), clients.sqs()

Credentials come from boto3's standard chain (environment, profile, task or instance role).
Only for a loopback endpoint with nothing configured are placeholder keys used: the local
endpoint accepts any key, and a laptop should not need an AWS account to run the pipeline.

Clients of the embedded endpoint (:mod:`am.endpoint`, registered here while it runs, or named to a
local worker in ``AM_EMBEDDED_ENDPOINT``) take nothing from this machine's AWS set-up: no profile,
config or credentials file, credential process, SSO or web identity (a broken one failed the run, a
working one signed local requests with the user's key id), no proxy from HTTP_PROXY (which would
carry the requests off this machine) and no region from AWS_REGION (moto serves real region names
only); they send the endpoint's token with every request.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from functools import partial
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
# The region every client of the embedded endpoint uses: it means nothing there, and moto has backends
# for real region names only (AWS_REGION=localhost answered every request with an HTML 500).
EMBEDDED_REGION = "us-east-1"
# Set by the local backend for its workers: the URL of the embedded endpoint they talk to, and its token.
EMBEDDED_ENDPOINT_VARIABLE = "AM_EMBEDDED_ENDPOINT"
ENDPOINT_TOKEN_VARIABLE = "AM_ENDPOINT_TOKEN"
# The header that carries the token; the embedded endpoint refuses requests without it (am.endpoint).
TOKEN_HEADER = "X-Am-Endpoint-Token"
# The variables that choose a proxy: an error through one names them, and the embedded endpoint's clients ignore them.
PROXY_VARIABLES = "HTTP_PROXY/HTTPS_PROXY (or http_proxy/https_proxy)"
# Where the user's credential chain failed in a way only they can fix (sign-in, a credential process).
_CREDENTIAL_SETUP_ERRORS = (
    botocore.exceptions.CredentialRetrievalError,
    botocore.exceptions.SSOError,
    botocore.exceptions.SSOTokenLoadError,
    botocore.exceptions.UnauthorizedSSOTokenError,
    botocore.exceptions.TokenRetrievalError,
)
# Raised by a request made with the user's credential chain: a token that expired or was never made.
_SIGN_IN_ERRORS = _CREDENTIAL_SETUP_ERRORS[1:]
# Embedded endpoints of this process, by URL, with their tokens ("" for one that asks for none): their
# clients are built apart from the user's AWS set-up.
_embedded_urls: dict[str, str] = {}
_embedded_lock = threading.Lock()
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


def register_embedded_endpoint(url: str, token: str = "") -> None:
    """Called by the embedded endpoint as it starts: clients of ``url`` in this process are isolated from then on,
    and send ``token`` with each request."""
    with _embedded_lock:
        _embedded_urls[url] = token


def forget_embedded_endpoint(url: str) -> None:
    """Called by the embedded endpoint as it stops."""
    with _embedded_lock:
        _embedded_urls.pop(url, None)


def embedded_token(endpoint_url: str) -> str | None:
    """The token of the embedded endpoint ``endpoint_url`` ("" if it asks for none), or None when it is no
    embedded endpoint: one of this process, or the one a local worker was named in AM_EMBEDDED_ENDPOINT.

    Decided by identity, not by the URL being loopback: a MinIO or localstack on localhost may check keys.
    """
    if not endpoint_url:
        return None
    with _embedded_lock:
        if endpoint_url in _embedded_urls:
            return _embedded_urls[endpoint_url]
    if os.environ.get(EMBEDDED_ENDPOINT_VARIABLE, "") == endpoint_url:
        return os.environ.get(ENDPOINT_TOKEN_VARIABLE, "")
    return None


def is_embedded(endpoint_url: str) -> bool:
    """Whether ``endpoint_url`` is an embedded endpoint (see :func:`embedded_token`)."""
    return embedded_token(endpoint_url) is not None


def embedded_worker_variables(endpoint_url: str) -> dict[str, str]:
    """What a local worker of the embedded endpoint ``endpoint_url`` is told, so its clients are isolated too
    and carry the endpoint's token."""
    variables = {EMBEDDED_ENDPOINT_VARIABLE: endpoint_url}
    if token := embedded_token(endpoint_url):
        variables[ENDPOINT_TOKEN_VARIABLE] = token
    return variables


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

    @property
    def embedded(self) -> bool:
        """Whether the clients talk to the embedded endpoint (see :func:`is_embedded`)."""
        return is_embedded(self.endpoint_url)

    @property
    def client_region(self) -> str:
        """The region clients are built for: ``region``, except on the embedded endpoint (EMBEDDED_REGION)."""
        return EMBEDDED_REGION if self.embedded else self.region

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
        """Pool size, timeouts and botocore retries shared by every client.

        Clients of the embedded endpoint get ``proxies={}``: botocore reads HTTP_PROXY only when
        ``proxies`` is None, and NO_PROXY=localhost does not cover 127.0.0.1, so on a proxied network
        every request of a local run went to the proxy (and failed there).
        """
        config = Config(
            region_name=self.client_region,
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "max_attempts": BOTOCORE_MAX_ATTEMPTS},
            tcp_keepalive=True,
        )
        return config.merge(Config(proxies={})) if self.embedded else config

    def _client(self, service: str) -> Any:
        try:
            return self._new_client(service)
        except _CREDENTIAL_SETUP_ERRORS as exc:
            raise ConfigError(f"cannot get AWS credentials for the {service} client: {exc}; sign in again (aws sso "
                              "login) or fix the profile's credential source (AWS_PROFILE, ~/.aws/config)") from exc
        except (botocore.exceptions.ProfileNotFound, botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.ConfigParseError, botocore.exceptions.InvalidConfigError) as exc:
            # The AWS configuration of this machine, not am-segm's: said in one line with where to look,
            # where botocore would print a traceback through the first client made.
            raise ConfigError(f"cannot set up the AWS {service} client: {exc}; check AWS_PROFILE, ~/.aws/config "
                              "and ~/.aws/credentials, and that AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are "
                              "set together") from exc

    def _new_client(self, service: str) -> Any:
        token = embedded_token(self.endpoint_url)
        embedded = token is not None
        core = _isolated_session() if embedded else botocore.session.Session()
        core.register_component("data_loader", _shared_loader(core))
        if embedded or (is_loopback(self.endpoint_url) and not _has_local_credentials(core)):
            core.set_credentials(_LOCAL_ACCESS_KEY, _LOCAL_SECRET_KEY)
        region = self.client_region
        if region != self.region:
            log.debug("region %s is not used on the embedded endpoint; its clients use %s", self.region, region)
        session = boto3.session.Session(botocore_session=core, region_name=region)
        kwargs: dict[str, Any] = {"config": self.config()}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        log.debug("new %s client for %s (%s%s)", service, self.endpoint_url or "AWS", region,
                  ", embedded" if embedded else "")
        client = session.client(service, **kwargs)
        client.meta.events.register("after-call-error", _explain_setup_error)
        if token:
            client.meta.events.register("before-send", partial(_add_token, token=token))
        return client


def _add_token(request: Any, token: str, **_: Any) -> None:
    """Give a request to the embedded endpoint the token without which it is refused (a header moto ignores)."""
    request.headers[TOKEN_HEADER] = token


def _isolated_session() -> botocore.session.Session:
    """A botocore session that reads nothing of the user's AWS set-up: no profile variable, no config or
    credentials file. The embedded endpoint accepts any key; the user's chain could only fail (a profile that
    does not exist, an SSO sign-in that expired, a credential process) or prompt, or ask real STS."""
    core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
    core.set_config_variable("config_file", os.devnull)
    core.set_config_variable("credentials_file", os.devnull)
    return core


def _explain_setup_error(exception: BaseException, **_: Any) -> None:
    """Raise, in place of a request's failure, one that says what on this machine to fix, where that is known.

    A proxy that cannot be reached failed a run with retries and a hint at AWS throttling; an SSO token
    that expired, with a traceback. Any other failure goes on as botocore raised it.
    """
    if isinstance(exception, botocore.exceptions.ProxyConnectionError):
        raise _ProxyUnreachable(proxy_url=exception.kwargs.get("proxy_url", ""),
                                error=exception.kwargs.get("error", exception)) from exception
    if isinstance(exception, _SIGN_IN_ERRORS):
        raise ConfigError(f"cannot get AWS credentials: {exception}; sign in again (aws sso login) or check "
                          "AWS_PROFILE and ~/.aws/config") from exception


class _ProxyUnreachable(botocore.exceptions.ProxyConnectionError):
    """A ProxyConnectionError (still retried as one) whose message names where the proxy came from."""

    fmt = ('Failed to connect to proxy URL: "{proxy_url}", taken from ' + PROXY_VARIABLES + ': fix or unset them, '
           "or add the endpoint's host to NO_PROXY")


def _has_local_credentials(core: botocore.session.Session) -> bool:
    """Whether credentials are configured without asking instance metadata, which may hang off AWS."""
    resolver = core.get_component("credential_provider")
    for name in _NETWORK_PROVIDERS:
        resolver.remove(name)
    return resolver.load_credentials() is not None


__all__ = ["EMBEDDED_REGION", "ClientFactory", "embedded_token", "embedded_worker_variables",
           "forget_embedded_endpoint", "is_embedded", "is_loopback", "register_embedded_endpoint"]
