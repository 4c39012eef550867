"""Batch inputs read in chunks, so memory does not grow with the input's size."""

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from mlferry.errors import ConfigError, EmptyInput, InputError

FORMATS = ("csv", "parquet")


def format_of(path: Path, given: str | None = None) -> str:
    """The table format of `path`: given, or from its suffix."""
    fmt = (given or Path(path).suffix.lstrip(".")).lower()
    if fmt == "pq":
        fmt = "parquet"
    if fmt not in FORMATS:
        raise ConfigError(
            f"cannot tell the format of {path}; name it .csv or .parquet "
            "(or give --input-format)"
        )
    return fmt


class FileSource:
    """A CSV or Parquet file, read `chunk_rows` rows at a time.

    The file's sha256 is computed on a background thread while it is read.
    """

    def __init__(self, path: Path, chunk_rows: int, fmt: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a folder, not a file" if self.path.is_dir() else "does not exist"
            raise ConfigError(f"input file {self.path} {what}")
        self.format = format_of(self.path, fmt)
        self.chunk_rows = chunk_rows
        self._sha256: str | None = None
        self._hasher = threading.Thread(target=self._hash, daemon=True)

    def _hash(self) -> None:
        digest = hashlib.sha256()
        with open(self.path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        self._sha256 = digest.hexdigest()

    @property
    def sha256(self) -> str | None:
        if self._sha256 is None:
            if not self._hasher.is_alive():
                self._hash()
            else:
                self._hasher.join()
        return self._sha256

    @property
    def total_rows(self) -> int | None:
        if self.format == "parquet":
            try:
                return pq.ParquetFile(self.path).metadata.num_rows
            except Exception:  # reported, with the reason, when the rows are read
                return None
        return None

    def describe(self) -> str:
        return str(self.path)

    def chunks(self) -> Iterator[pd.DataFrame]:
        """Yield the rows in chunks; a header-only file yields one empty frame."""
        if self._sha256 is None and not self._hasher.is_alive():
            self._hasher.start()  # hashed while the rows are read and scored
        if self.path.stat().st_size == 0:
            raise EmptyInput(
                f"input file {self.path} is empty (0 bytes); expected at least a "
                "header line"
            )
        if self.format == "parquet":
            yield from self._parquet()
        else:
            yield from self._csv()

    def _parquet(self) -> Iterator[pd.DataFrame]:
        try:
            # pre_buffer would read ahead the whole file: memory would grow with it.
            parquet = pq.ParquetFile(self.path, pre_buffer=False)
        except Exception as exc:
            raise InputError(
                f"{self.path} is not a readable Parquet file: {exc}"
            ) from None
        if parquet.metadata.num_rows == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
            return
        batches = parquet.iter_batches(batch_size=self.chunk_rows)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
                raise InputError(
                    f"{self.path} cannot be read as Parquet: {exc}"
                ) from None
            yield batch.to_pandas()

    def _csv(self) -> Iterator[pd.DataFrame]:
        try:
            reader = pd.read_csv(self.path, chunksize=self.chunk_rows)
            produced = False
            for chunk in reader:
                produced = True
                yield chunk
            if not produced:  # a header and no rows
                yield pd.read_csv(self.path, nrows=0)
        except pd.errors.EmptyDataError:
            raise EmptyInput(
                f"input file {self.path} has no header line; expected at least one"
            ) from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path} is not readable as CSV: {exc}") from None


class FrameSource:
    """An in-memory table (a what-if scenario), served in chunks like a file."""

    def __init__(self, frame: pd.DataFrame, chunk_rows: int, label: str):
        self.frame = frame
        self.chunk_rows = chunk_rows
        self.label = label
        self.path = None
        self.format = "frame"
        self.sha256 = hashlib.sha256(
            pd.util.hash_pandas_object(frame, index=False).values.tobytes()
        ).hexdigest()
        self.total_rows = len(frame)

    def describe(self) -> str:
        return self.label

    def chunks(self) -> Iterator[pd.DataFrame]:
        if self.frame.empty:
            yield self.frame
        for start in range(0, len(self.frame), self.chunk_rows):
            yield self.frame.iloc[start : start + self.chunk_rows].reset_index(
                drop=True
            )
