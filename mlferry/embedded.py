"""The embedded registry: a real `mlflow server` on loopback with project-local state.

State (sqlite database, artifact store, PID and log) lives under `<home>/registry`
and survives restarts. The server is sized for a small machine: one worker and no
job runner, which keeps it to two processes and about 0.5 GB.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from mlferry.errors import RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRegistry:
    """Where the embedded registry keeps its state and where it listens."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 5050

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def is_up(self, timeout: float = 1.0) -> bool:
        """True when an MLflow server answers /health at this address."""
        try:
            return requests.get(f"{self.url}/health", timeout=timeout).ok
        except requests.RequestException:
            return False

    def pid(self) -> int | None:
        """PID of the server this folder started, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(
        self, wait: float = 60.0, app_name: str | None = None, env: dict | None = None
    ) -> int:
        """Start the server in the background (a no-op if ours already runs).

        Args:
            app_name: MLflow's `--app-name`, e.g. "basic-auth" for a registry that
                asks for credentials.
            env: extra environment for the server (e.g. the auth app's settings).

        Returns:
            The server's PID.
        """
        running = self.pid()
        if running and self.is_up():
            log.info(
                "embedded registry already running at %s (pid %d)", self.url, running
            )
            return running
        if self.is_up():
            raise RegistryError(
                f"something else already answers at {self.url}; stop it or choose "
                "another port with MLFERRY_REGISTRY_PORT"
            )

        root = self.root.resolve()
        (root / "artifacts").mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--serve-artifacts",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        if app_name:
            command += ["--app-name", app_name]
        env = dict(
            os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {})
        )
        # The server must not talk to itself through a registry the caller set.
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log_file, "ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=root,  # anything the server writes beside itself stays in state
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")

        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise RegistryError(
                    f"the embedded registry exited with code {process.returncode} "
                    f"while starting; log {self.log_file}:\n{tail}"
                )
            if self.is_up():
                log.info(
                    "embedded registry ready at %s (pid %d, state in %s)",
                    self.url,
                    process.pid,
                    root,
                )
                return process.pid
            time.sleep(0.25)
        self.stop()
        raise RegistryError(f"the embedded registry did not answer within {wait:.0f}s")

    def stop(self, wait: float = 20.0) -> bool:
        """Stop the server this folder started, by its PID. True if one was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child: poll for it to go away
                finished = 0
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    finished = pid
            if finished == pid:
                break
            time.sleep(0.2)
        else:
            log.warning(
                "registry pid %d ignored SIGTERM for %.0fs; killing it", pid, wait
            )
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True
