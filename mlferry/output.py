"""Batch output that is all there or not there at all.

A run writes into a temporary folder beside its final place, then swaps it in with
renames. A failed or killed run leaves nothing at the final path (a previous
complete result for the same run key stays). One run per run key at a time: a lock
file guards the partition, so a duplicate run fails fast instead of racing.
"""

import fcntl
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from mlferry.errors import OutputBusy

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Partition:
    """The output folder of one run key: `<base>/<job>/run=<key>/`."""

    def __init__(self, base: Path, job: str, run_key: str):
        self.parent = Path(base) / job
        self.final = self.parent / f"run={run_key}"
        self._prefix = f".run={run_key}"
        self._lock_fd: int | None = None
        self.staging: Path | None = None

    def __enter__(self) -> "Partition":
        self.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.parent / f"{self._prefix}.lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(
                f"another run is writing {self.final} right now (lock {lock_path}); "
                "this run stops so the two do not race"
            ) from None
        self._lock_fd = fd
        self._recover()
        self.staging = self.parent / f"{self._prefix}.tmp-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()
        return self

    def _recover(self) -> None:
        """Clear what a killed run left: staging folders, or a swap cut in half."""
        for leftover in self.parent.glob(f"{self._prefix}.tmp-*"):
            log.warning("removing %s left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        previous = sorted(self.parent.glob(f"{self._prefix}.old-*"))
        if previous and not self.final.exists():
            log.warning("restoring %s from an interrupted swap", self.final)
            previous[-1].rename(self.final)
        for leftover in self.parent.glob(f"{self._prefix}.old-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def commit(self, manifest: dict) -> Path:
        """Write the manifest and success marker, then swap the staging folder in."""
        assert self.staging is not None
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        (self.staging / SUCCESS_MARKER).write_text("")
        for item in self.staging.iterdir():
            with open(item, "rb+") as stream:
                os.fsync(stream.fileno())
        _fsync_dir(self.staging)

        retired = None
        if self.final.exists():
            retired = self.parent / f"{self._prefix}.old-{uuid.uuid4().hex[:8]}"
            self.final.rename(retired)
        self.staging.rename(self.final)
        _fsync_dir(self.parent)
        self.staging = None
        if retired:
            shutil.rmtree(retired, ignore_errors=True)
        return self.final

    def __exit__(self, *exc_info) -> None:
        if self.staging is not None:  # not committed: leave nothing behind
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
