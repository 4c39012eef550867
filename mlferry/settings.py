"""One settings object: every knob once, with a type, a default and a line of help.

Each field is read from an `MLFERRY_*` environment variable and can be given as a
command-line flag of the same name (`MLFERRY_CHUNK_ROWS` = `--chunk-rows`). The
registry is MLflow's own `MLFLOW_TRACKING_URI`, with MLflow's credential variables.
"""

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlferry.errors import ConfigError

DEFAULT_MODEL_URI = "models:/diabetes@champion"


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU limit.

    In a container with `limits.cpu: 1` on a 16-core node, os.cpu_count() says 16;
    the cgroup quota says 1.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = cpus or os.cpu_count() or 1
    quota = period = None
    try:  # cgroup v2
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            pass
    if quota and period and quota not in ("max", "-1"):
        cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    return cpus


class Settings(BaseSettings):
    """mlferry's configuration, from env vars and flags (flags win)."""

    model_config = SettingsConfigDict(env_prefix="MLFERRY_", extra="ignore")

    home: Path = Field(
        Path(".mlferry"), description="Folder for local state: registry, model cache."
    )
    tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "tracking_uri"),
        description="MLflow registry to use; unset means the embedded local registry.",
    )
    registry_host: str = Field("127.0.0.1", description="Embedded registry address.")
    registry_port: int = Field(
        5050, ge=1, le=65535, description="Embedded registry port."
    )
    registry_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for the registry before giving up."
    )
    model_uri: str | None = Field(
        None, description=f"Model to use (default {DEFAULT_MODEL_URI} or the job's)."
    )
    model_dir: Path | None = Field(
        None, description="A local pinned model folder; when set no registry is used."
    )
    input_dir: Path = Field(
        Path(".mlferry/data"), description="Base folder for relative input paths."
    )
    output_dir: Path = Field(
        Path("output"), description="Base folder for batch outputs."
    )
    run_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Output partition of a batch run (default: today, UTC).",
    )
    chunk_rows: int = Field(
        100_000, ge=1, description="Rows read, checked and scored at a time."
    )
    score_workers: int = Field(
        default_factory=lambda: min(4, available_cpus()),
        ge=1,
        le=64,
        description="Processes predicting batch chunks in parallel (1: in-process).",
    )
    host: str = Field("127.0.0.1", description="Address the model server listens on.")
    http_port: int = Field(8080, ge=0, le=65535, description="Server HTTP port.")
    grpc_port: int = Field(8081, ge=0, le=65535, description="Server gRPC port.")
    metrics_port: int = Field(8082, ge=0, le=65535, description="Prometheus port.")
    workers: int = Field(
        1, ge=0, le=16, description="MLServer inference worker processes (0: inline)."
    )
    scratch_dir: Path | None = Field(
        None, description="Writable folder for server settings and scratch files."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    @property
    def serve_dir(self) -> Path:
        """Where the server's settings and scratch files go."""
        return self.scratch_dir or self.home / "serve"


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; non-None `overrides` (flags) win.

    Raises:
        ConfigError: a value is invalid; the message names the variable and what
            it accepts.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = "MLFLOW_TRACKING_URI" if field == "tracking_uri" else field
            if not name.isupper():
                name = f"MLFERRY_{name.upper()}"
            problems.append(
                f"{name} (--{field.replace('_', '-')}): got {error.get('input')!r}; "
                f"{error['msg']}"
            )
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
