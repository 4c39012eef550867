"""Connect to a model registry and resolve `models:/` URIs to one pinned version.

Every consumer (batch job, server, image build) goes through `resolve`, so they all
agree on which registry version they use and say so the same way.
"""

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from mlferry.embedded import EmbeddedRegistry
from mlferry.errors import (
    ConfigError,
    ModelNotFound,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from mlferry.settings import DEFAULT_MODEL_URI, Settings

log = logging.getLogger(__name__)

PIN_FILE = "mlferry-pin.json"
_CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# MLflow's own client retries for minutes by default; a job should fail in seconds.
_MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/` URI: exactly one of alias, stage or version is set."""

    name: str
    alias: str | None = None
    stage: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> "ModelRef":
        match = re.fullmatch(r"models:/+([^/@]+)(?:@([^/@]+)|/([^/@]+))", uri.strip())
        if not match:
            raise ConfigError(
                f"model URI {uri!r} is not understood; use models:/NAME@ALIAS, "
                "models:/NAME/STAGE or models:/NAME/VERSION"
            )
        name, alias, tail = match.groups()
        if alias:
            return cls(name, alias=alias)
        if tail.isdigit():
            return cls(name, version=tail)
        return cls(name, stage=tail)

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        return f"{self.name}/{self.version or self.stage}"


@dataclass(frozen=True)
class PinnedModel:
    """One registry version, and how it was asked for."""

    name: str
    version: str
    model_uri: str
    alias: str | None = None
    stage: str | None = None
    run_id: str | None = None
    source: str | None = None
    registry: str | None = None

    @property
    def pinned_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        asked = ModelRef.parse(self.model_uri)
        run = f" (run {self.run_id})" if self.run_id else ""
        return f"{asked} → version {self.version}{run}"

    def to_dict(self) -> dict:
        return asdict(self) | {"pinned_uri": self.pinned_uri}

    @classmethod
    def from_dict(cls, data: dict) -> "PinnedModel":
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in fields})


def host_of(uri: str) -> str:
    """The host part of a registry URI, for messages (never credentials)."""
    parts = urlsplit(uri)
    return parts.hostname or uri


def _credentials() -> tuple[str | None, str | None]:
    """Credentials as MLflow reads them: env first, then ~/.mlflow/credentials."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    return creds.username or None, creds.password or None


def _check_credentials() -> None:
    """Refuse half-set credentials before any network call; trim stray newlines."""
    for name in _CREDENTIAL_VARS:
        value = os.environ.get(name)
        if value is not None and value != value.strip():
            # A token file often ends with a newline that would break basic auth.
            os.environ[name] = value.strip()
            log.warning("%s had leading/trailing whitespace; it was trimmed", name)
    user, password = _credentials()
    if user and not password:
        raise RegistryAuthError(
            "MLFLOW_TRACKING_USERNAME is set but MLFLOW_TRACKING_PASSWORD is empty or "
            "unset; set it to your password or access token (on DagsHub: a token)"
        )
    if password and not user:
        raise RegistryAuthError(
            "MLFLOW_TRACKING_PASSWORD is set but MLFLOW_TRACKING_USERNAME is empty or "
            "unset; set both"
        )


def _auth() -> tuple[str, str] | None:
    user, password = _credentials()
    return (user, password) if user and password else None


def _preflight(uri: str, timeout: float) -> str | None:
    """Check the registry answers and accepts our credentials; return its version."""
    host = host_of(uri)
    probe = f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/search"
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = requests.get(
                probe,
                params={"max_results": 1},
                auth=_auth(),
                timeout=min(5.0, timeout),
            )
            break
        except requests.RequestException as exc:
            if time.monotonic() + attempt > deadline:
                raise RegistryUnreachable(
                    f"the registry at {host} did not answer after {attempt} tries "
                    f"({type(exc).__name__}); check MLFLOW_TRACKING_URI and the network"
                ) from None
            time.sleep(min(attempt, 3))
    if answer.status_code in (401, 403):
        given = "with" if _auth() else "without"
        raise RegistryAuthError(
            f"authentication to {host} failed (HTTP {answer.status_code}) {given} "
            "credentials; check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if answer.status_code >= 400:
        raise RegistryError(
            f"the registry at {host} answered HTTP {answer.status_code} to a model "
            "search; is MLFLOW_TRACKING_URI an MLflow server?"
        )
    try:
        version = requests.get(f"{uri.rstrip('/')}/version", auth=_auth(), timeout=5)
        return version.text.strip() if version.ok and len(version.text) < 40 else None
    except requests.RequestException:
        return None


def connect(settings: Settings) -> str:
    """Point MLflow at the configured registry after checking it answers.

    Returns:
        The tracking URI in use.
    """
    for name, value in _MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    _check_credentials()

    uri = settings.tracking_uri
    if not uri:
        embedded = EmbeddedRegistry(
            settings.home / "registry", settings.registry_host, settings.registry_port
        )
        uri = embedded.url
        if not embedded.is_up():
            raise RegistryUnreachable(
                f"MLFLOW_TRACKING_URI is not set, and the embedded registry at {uri} "
                "is not running; start it with `mlferry registry start` (or "
                "`make registry`), or set MLFLOW_TRACKING_URI to your registry"
            )
        log.info(
            "MLFLOW_TRACKING_URI is not set: using the embedded registry at %s", uri
        )
    elif uri.startswith(("http://", "https://")):
        server_version = _preflight(uri, settings.registry_timeout)
        log.info(
            "registry %s answers (MLflow %s)", host_of(uri), server_version or "unknown"
        )
    else:
        log.info("using the registry at %s", uri)

    import mlflow

    # MLflow also exports the URI to the environment, so child processes inherit it.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _known_models(client) -> str:
    names = [m.name for m in client.search_registered_models(max_results=20)]
    return ", ".join(sorted(names)) or "none"


def resolve(model_uri: str | None) -> PinnedModel:
    """Resolve a `models:/` URI to one registry version (after `connect`).

    Raises:
        ModelNotFound: the model, alias, stage or version does not exist; the message
            lists what does.
    """
    from mlflow.exceptions import MlflowException

    model_uri = model_uri or DEFAULT_MODEL_URI
    ref = ModelRef.parse(model_uri)
    client = _client()
    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFound(
                f"registered model {ref.name!r} does not exist in the registry; "
                f"registered models: {_known_models(client)}"
            ) from None
        raise _explain(exc) from None

    try:
        if ref.alias:
            found = client.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version:
            found = client.get_model_version(ref.name, ref.version)
        elif ref.stage.lower() == "latest":
            versions = client.search_model_versions(f"name='{ref.name}'")
            found = max(versions, key=lambda v: int(v.version), default=None)
        else:
            with warnings.catch_warnings():  # stages are deprecated, still served
                warnings.simplefilter("ignore", FutureWarning)
                versions = client.get_latest_versions(ref.name, stages=[ref.stage])
            found = versions[0] if versions else None
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise _explain(exc) from None
        found = None

    if found is None:
        aliases = ", ".join(sorted(registered.aliases)) or "none"
        versions = client.search_model_versions(f"name='{ref.name}'")
        listing = (
            ", ".join(
                f"{v.version} ({v.current_stage})"
                for v in sorted(versions, key=lambda v: int(v.version))
            )
            or "none"
        )
        if ref.alias:
            problem = f"has no alias {ref.alias!r}"
        elif ref.version:
            problem = f"has no version {ref.version}"
        else:
            problem = f"has no version in stage {ref.stage!r}"
        raise ModelNotFound(
            f"model {ref.name!r} {problem}; its aliases: {aliases}; "
            f"its versions (stage): {listing}"
        )

    pinned = PinnedModel(
        name=ref.name,
        version=str(found.version),
        model_uri=model_uri,
        alias=ref.alias,
        stage=ref.stage,
        run_id=found.run_id,
        source=found.source,
        registry=host_of(os.environ.get("MLFLOW_TRACKING_URI", "")),
    )
    log.info("resolved %s", pinned.describe())
    return pinned


def _explain(exc) -> RegistryError:
    """Turn an MLflow client failure into a message that names the registry host."""
    host = host_of(os.environ.get("MLFLOW_TRACKING_URI", ""))
    text = str(exc).splitlines()[0][:300]
    if "401" in text or "403" in text or "credentials" in text.lower():
        return RegistryAuthError(f"the registry at {host} refused the request: {text}")
    return RegistryError(f"the registry at {host} failed: {text}")


def _holds(dest: Path, pinned: PinnedModel) -> bool:
    """True when `dest` is a complete copy of exactly this version."""
    pin_path = dest / PIN_FILE
    if not (pin_path.exists() and (dest / "MLmodel").exists()):
        return False
    held = PinnedModel.from_dict(json.loads(pin_path.read_text()))
    return (held.name, held.version) == (pinned.name, pinned.version)


def fetch(pinned: PinnedModel, dest: Path) -> Path:
    """Download the pinned version into `dest` (an MLflow model folder + pin file).

    A folder that already holds this exact version is reused. Processes fetching the
    same folder at once take turns (a lock beside it), and each downloads into its
    own staging folder, so a copy is only ever seen complete.
    """
    import mlflow

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _holds(dest, pinned):
            log.info(
                "model %s version %s already in %s", pinned.name, pinned.version, dest
            )
            return dest
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        started = time.monotonic()
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=pinned.pinned_uri, dst_path=str(staging)
            )
            (staging / PIN_FILE).write_text(
                json.dumps(pinned.to_dict(), indent=2) + "\n"
            )
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        except mlflow.exceptions.MlflowException as exc:
            raise _explain(exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "downloaded %s version %s to %s in %.1fs",
        pinned.name,
        pinned.version,
        dest,
        time.monotonic() - started,
    )
    return dest


def read_pin(model_dir: Path) -> PinnedModel:
    """The pinned version recorded in a local model folder."""
    pin_path = Path(model_dir) / PIN_FILE
    if not (Path(model_dir) / "MLmodel").exists():
        raise ConfigError(
            f"{model_dir} is not an MLflow model folder (no MLmodel file)"
        )
    if not pin_path.exists():
        raise ConfigError(
            f"{model_dir} has no {PIN_FILE}; create the folder with `mlferry fetch`"
        )
    return PinnedModel.from_dict(json.loads(pin_path.read_text()))


def pin_model(
    settings: Settings, model_uri: str | None = None
) -> tuple[PinnedModel, Path]:
    """The model to use, as a local folder: the configured one, or fetched and cached.

    `MLFERRY_MODEL_DIR` wins and needs no registry; otherwise the URI is resolved and
    the version downloaded once into `<home>/models/NAME/VERSION`.
    """
    if settings.model_dir:
        pinned = read_pin(settings.model_dir)
        log.info(
            "using the local model folder %s: %s", settings.model_dir, pinned.describe()
        )
        return pinned, Path(settings.model_dir)
    connect(settings)
    pinned = resolve(settings.model_uri or model_uri)
    cache = settings.home / "models" / pinned.name / pinned.version
    return pinned, fetch(pinned, cache)
