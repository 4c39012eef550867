"""Model as a service: MLServer with the MLflow runtime, on one pinned version.

`prepare` resolves the model with the same code as the batch job, keeps a local copy
of that version, and writes MLServer's settings: the served name is the registered
name and the served version the registry version, so every V2 response says which
version answered. `Server` starts MLServer, waits until the model itself is ready
(`/v2/models/NAME/ready`; the server-level check can be true with no model loaded)
and stops it with SIGTERM to its main process only (signalling the whole process
group hangs MLServer).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from mlferry.errors import MlferryError
from mlferry.registry import PinnedModel, pin_model
from mlferry.settings import Settings

log = logging.getLogger(__name__)

RUNTIME = "mlferry.runtime.MlferryRuntime"


class ServerError(MlferryError):
    """The model server could not start or did not become ready."""

    exit_code = 6


@dataclass(frozen=True)
class ServeConfig:
    """A written MLServer configuration for one pinned model version."""

    folder: Path
    pinned: PinnedModel
    model_path: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/v2/models/{self.pinned.name}/ready"


def prepare(settings: Settings, model_uri: str | None = None) -> ServeConfig:
    """Pin the model and write MLServer's settings under the scratch folder."""
    pinned, model_path = pin_model(settings, model_uri)
    folder = (settings.serve_dir / pinned.name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    server = {
        "server_name": "mlferry",
        "host": settings.host,
        "http_port": settings.http_port,
        "grpc_port": settings.grpc_port,
        "metrics_port": settings.metrics_port,
        "metrics_endpoint": "/metrics",
        "parallel_workers": settings.workers,
        # MLServer writes these at start; under a read-only root they must be scratch.
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        "model_repository_root": str(folder / "models"),
        "load_models_at_startup": True,
        # Debug mode would put Python tracebacks into 500 responses.
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(server, indent=2) + "\n")
    add_model(folder, pinned, model_path)
    return ServeConfig(
        folder,
        pinned,
        Path(model_path),
        settings.host,
        settings.http_port,
        settings.grpc_port,
        settings.metrics_port,
    )


def add_model(folder: Path, pinned: PinnedModel, model_path: Path) -> Path:
    """Write the model-settings.json that serves `model_path` as `pinned`."""
    model_folder = Path(folder) / "models" / pinned.name
    model_folder.mkdir(parents=True, exist_ok=True)
    model = {
        "name": pinned.name,
        "implementation": RUNTIME,
        "parameters": {
            "uri": str(Path(model_path).resolve()),
            "version": pinned.version,
            "extra": {"pin": pinned.to_dict()},
        },
    }
    path = model_folder / "model-settings.json"
    path.write_text(json.dumps(model, indent=2) + "\n")
    return path


def _mlserver_command(folder: Path) -> list[str]:
    script = Path(sys.executable).with_name("mlserver")
    if script.exists():
        return [str(script), "start", str(folder)]
    return [
        sys.executable,
        "-c",
        "from mlserver.cli import main; main()",
        "start",
        str(folder),
    ]


class Server:
    """A running MLServer process for one pinned model (a context manager)."""

    def __init__(self, config: ServeConfig, log_file: Path | None = None):
        self.config = config
        self.log_file = log_file
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.config.url

    def start(self, timeout: float = 180.0) -> "Server":
        """Start MLServer and wait until the model answers ready."""
        self.launch()
        self.wait_ready(timeout)
        log.info(
            "serving %s version %s at %s (V2 /v2/models/%s/infer, MLflow /invocations; "
            "metrics on port %d)",
            self.config.pinned.name,
            self.config.pinned.version,
            self.url,
            self.config.pinned.name,
            self.config.metrics_port,
        )
        return self

    def launch(self) -> None:
        """Start the MLServer process without waiting for it."""
        output = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115
        env = dict(os.environ)
        # Our settings file is the one source of truth for the server's knobs.
        for name in [k for k in env if k.startswith("MLSERVER_")]:
            env.pop(name)
        self.process = subprocess.Popen(
            _mlserver_command(self.config.folder),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.config.folder,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, not its workers
        )
        if output:
            output.close()
        log.info(
            "starting MLServer (pid %d) for %s",
            self.process.pid,
            self.config.pinned.describe(),
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = ""
                if self.log_file and Path(self.log_file).exists():
                    tail = Path(self.log_file).read_text(errors="replace")[-3000:]
                raise ServerError(
                    f"MLServer exited with code {self.process.returncode} before "
                    f"{self.config.pinned.name} was ready\n{tail}"
                )
            try:
                if requests.get(self.config.ready_url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(
            f"{self.config.ready_url} did not answer 200 within {timeout}s"
        )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to MLServer's main process; SIGKILL if it has not exited in time."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("MLServer ignored SIGTERM for %.0fs; killing it", timeout)
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> "Server":
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def serve_forever(config: ServeConfig) -> int:
    """Run MLServer in the foreground until SIGTERM/SIGINT; return its exit code."""
    server = Server(config)
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        log.info("received %s; stopping MLServer", signal.Signals(signum).name)
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        server.start()
    except ServerError:
        if stopping:  # asked to stop while the model was still loading
            return 0
        raise
    code = server.process.wait()
    if not stopping and code != 0:
        raise ServerError(f"MLServer exited with code {code}")
    return 0 if stopping else code
