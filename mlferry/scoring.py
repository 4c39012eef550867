"""Streaming batch scoring: read in chunks, check, predict, write atomically.

The story of a run goes to the log: what model version and input at the start, one
line per phase, and a closing line with rows, seconds and rows/s. Every output
carries a manifest saying exactly which registry version produced it from what.
"""

import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlferry import __version__
from mlferry.errors import InputError
from mlferry.output import Partition
from mlferry.registry import PinnedModel, pin_model
from mlferry.schema import Column, columns_of, conform, extra_columns
from mlferry.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("parquet", "csv")


@dataclass
class LoadedModel:
    """A pinned registry version, loaded for in-process prediction."""

    pinned: PinnedModel
    path: Path
    pyfunc: object
    columns: list[Column] | None

    def predict(self, frame: pd.DataFrame, row_offset: int = 0) -> pd.DataFrame:
        """Check `frame` against the signature and return its prediction columns."""
        return self.predict_checked(conform(frame, self.columns, row_offset))

    def predict_checked(self, inputs: pd.DataFrame) -> pd.DataFrame:
        """Prediction columns for inputs that already passed `conform`."""
        if len(inputs) == 0:
            return pd.DataFrame({"prediction": np.empty(0, dtype=np.float64)})
        return prediction_columns(self.pyfunc.predict(inputs), len(inputs))


# Worker processes predict in parallel: many model libraries (scikit-learn's
# gradient boosting among them) hold the GIL while predicting, so threads would not.
_worker_model: LoadedModel | None = None


def _init_worker(model: LoadedModel, parent: int) -> None:
    global _worker_model
    _worker_model = model
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if sys.platform == "linux":
        # Die with the parent, even when it is killed with SIGKILL mid-run.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _predict_in_worker(inputs: pd.DataFrame) -> pd.DataFrame:
    return _worker_model.predict_checked(inputs)


def _worker_pool(model: LoadedModel, workers: int) -> ProcessPoolExecutor | None:
    """Forked workers that share the loaded model; None for in-process scoring."""
    if workers <= 1:
        return None
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(model, os.getpid()),
    )
    # Start them all now, before any reader thread exists in this process.
    for future in [pool.submit(os.getpid) for _ in range(workers)]:
        future.result()
    return pool


def load_model(settings: Settings, model_uri: str | None = None) -> LoadedModel:
    """Resolve, fetch (once) and load the configured model."""
    import mlflow

    pinned, path = pin_model(settings, model_uri)
    started = time.monotonic()
    model = mlflow.pyfunc.load_model(str(path))
    columns = columns_of(model.metadata.signature)
    if columns is None:
        log.warning(
            "model %s has no column signature; input is not checked", pinned.name
        )
    log.info(
        "loaded %s from %s in %.1fs",
        pinned.describe(),
        path,
        time.monotonic() - started,
    )
    return LoadedModel(pinned, path, model, columns)


def prediction_columns(raw, rows: int) -> pd.DataFrame:
    """The model's output as named columns: `prediction` or `prediction_<name>`."""
    if isinstance(raw, pd.DataFrame):
        if raw.shape[1] == 1:
            return pd.DataFrame({"prediction": raw.iloc[:, 0].to_numpy()})
        return raw.add_prefix("prediction_").reset_index(drop=True)
    values = np.asarray(raw)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:
        return pd.DataFrame({"prediction": values})
    return pd.DataFrame(values.reshape(rows, -1)).add_prefix("prediction_")


def git_commit() -> str | None:
    """The code's git commit: from MLFERRY_GIT_COMMIT (images) or the checkout."""
    if commit := os.environ.get("MLFERRY_GIT_COMMIT"):
        return commit
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


class _Writer:
    """Appends scored chunks to one Parquet or CSV file."""

    def __init__(self, path: Path, fmt: str):
        self.path = path
        self.format = fmt
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._csv_started = False

    def write(self, chunk: pd.DataFrame, predictions: pd.DataFrame) -> None:
        """Append the input rows with their prediction columns beside them."""
        if self.format == "csv":
            frame = pd.concat([chunk.reset_index(drop=True), predictions], axis=1)
            frame.to_csv(self.path, mode="a", header=not self._csv_started, index=False)
            self._csv_started = True
            return
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        for name in predictions.columns:
            table = table.append_column(str(name), pa.array(predictions[name]))
        if self._parquet is None:
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self.path, self._schema)
        elif not table.schema.equals(self._schema):
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                now = {field.name: field.type for field in table.schema}
                changed = [
                    f"{field.name!r} ({field.type} → {now[field.name]})"
                    for field in self._schema
                    if field.name in now and now[field.name] != field.type
                ]
                raise InputError(
                    f"column {', '.join(changed)} changed type from one chunk to the "
                    "next; give it one type, or write CSV output"
                ) from None
        self._parquet.write_table(table)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


class _Progress:
    """A progress bar on a terminal; a log line every few seconds elsewhere."""

    def __init__(self, total: int | None, label: str):
        self.rows = 0
        self._last_log = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, rows: int) -> None:
        self.rows += rows
        if self._bar is not None:
            self._bar.update(self._task, advance=rows)
        elif time.monotonic() - self._last_log > 5:
            self._last_log = time.monotonic()
            log.info("scored %d rows so far", self.rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def score(
    model: LoadedModel,
    source,
    *,
    job: str,
    output_dir: Path,
    run_key: str | None = None,
    output_format: str = "parquet",
    workers: int = 1,
    extra_manifest: dict | None = None,
    before_commit=None,
) -> dict:
    """Score every row of `source` and publish the result atomically.

    Args:
        source: a `FileSource` or `FrameSource`.
        job: names the output folder `<output_dir>/<job>/run=<run_key>/`.
        run_key: the partition (default: today's UTC date); a rerun replaces it.
        workers: processes predicting in parallel (1: in this process).
        before_commit: called with the staging folder before the swap (plots).

    Returns:
        The manifest written beside the predictions.
    """
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"output format {output_format!r}: use parquet or csv")
    run_key = run_key or datetime.now(UTC).strftime("%Y-%m-%d")
    started_at = datetime.now(UTC)
    started = time.monotonic()
    pinned = model.pinned
    log.info(
        "job %s: model %s; input %s; output %s/%s/run=%s (%s)",
        job,
        pinned.describe(),
        source.describe(),
        output_dir,
        job,
        run_key,
        output_format,
    )

    # Workers are forked before the output lock is taken, so they never hold it.
    pool = _worker_pool(model, workers)
    try:
        with Partition(output_dir, job, run_key) as partition:
            target = partition.staging / f"predictions.{output_format}"
            writer = _Writer(target, output_format)
            progress = _Progress(source.total_rows, f"scoring {job}")
            rows_in = 0
            warned_extra = False
            pending = deque()
            try:
                for chunk in source.chunks():
                    if not warned_extra and (
                        extra := extra_columns(chunk, model.columns)
                    ):
                        log.info(
                            "passing through columns the model does not use: %s",
                            ", ".join(extra),
                        )
                        warned_extra = True
                    # Checked here, so an error names the row of the whole input.
                    inputs = conform(chunk, model.columns, rows_in)
                    if pool is None:
                        future = Future()
                        future.set_result(model.predict_checked(inputs))
                    else:
                        future = pool.submit(_predict_in_worker, inputs)
                    pending.append((chunk, future))
                    rows_in += len(chunk)
                    # Bounded: at most workers + 1 chunks in memory at once.
                    while len(pending) > max(workers, 1):
                        _write(writer, progress, *pending.popleft())
                while pending:
                    _write(writer, progress, *pending.popleft())
            finally:
                writer.close()
                progress.close()

            if before_commit is not None:
                before_commit(partition.staging)
            finished_at = datetime.now(UTC)
            seconds = time.monotonic() - started
            manifest = {
                "job": job,
                "run_key": run_key,
                "model": {
                    "name": pinned.name,
                    "version": pinned.version,
                    "alias": pinned.alias,
                    "stage": pinned.stage,
                    "run_id": pinned.run_id,
                    "model_uri": pinned.model_uri,
                    "pinned_uri": pinned.pinned_uri,
                    "registry": pinned.registry,
                },
                "input": {
                    "path": str(source.path) if source.path else None,
                    "description": source.describe(),
                    "format": source.format,
                    "sha256": source.sha256,
                },
                "output": {"file": target.name, "format": output_format},
                "rows_in": rows_in,
                "rows_out": progress.rows,
                "started_at": started_at.isoformat(),
                "finished_at": finished_at.isoformat(),
                "duration_seconds": round(seconds, 3),
                "mlferry_version": __version__,
                "git_commit": git_commit(),
            } | (extra_manifest or {})
            final = partition.commit(manifest)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    rate = progress.rows / seconds if seconds > 0 else 0.0
    log.info(
        "job %s: %d rows scored in %.2fs (%.0f rows/s) → %s",
        job,
        progress.rows,
        seconds,
        rate,
        final,
    )
    manifest["output"]["path"] = str(final / target.name)
    return manifest


def _write(writer: _Writer, progress: _Progress, chunk: pd.DataFrame, future) -> None:
    predictions = future.result()
    writer.write(chunk, predictions)
    progress.advance(len(predictions))


def read_output(path: Path) -> pd.DataFrame:
    """Read a batch output file (Parquet or CSV) back into a frame."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)
