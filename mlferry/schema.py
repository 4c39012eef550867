"""Check input against a model's signature and cast it to the declared types.

One policy for every path (batch file, Open Inference Protocol, /invocations):
- a required column that is missing is an error naming it and the expected columns;
- columns the model does not know are left out of what the model sees;
- a value that is not of the column's type (text in a number column, a fraction or
  an out-of-range number in an integer column) is an error naming column and row;
- a missing value (null, NaN, empty CSV cell) is an error naming column and row:
  models are not assumed to handle gaps, and an integer column cannot hold one.
Rows are numbered from 1, as a person counts the data rows of a file.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlferry.errors import SchemaMismatch

# MLflow signature type → (numpy dtype, kind) for the cast.
_NUMERIC = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
}


@dataclass(frozen=True)
class Column:
    """One input column of a model's signature."""

    name: str
    type: str  # MLflow's name: double, float, long, integer, boolean, string, ...
    required: bool = True


def columns_of(signature) -> list[Column] | None:
    """The signature's input columns, or None when the model declares none by name."""
    if signature is None or signature.inputs is None:
        return None
    schema = signature.inputs
    if not schema.has_input_names() or schema.is_tensor_spec():
        return None
    return [
        Column(spec.name, spec.type.name, getattr(spec, "required", True))
        for spec in schema.inputs
    ]


def _show(value) -> str:
    """A value as the user wrote it: 1.5, 'abc' (not np.float64(1.5))."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _first_bad(mask: pd.Series | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _fail(column: str, position: int, row_offset: int, what: str) -> SchemaMismatch:
    row = row_offset + position + 1
    return SchemaMismatch(
        f"column {column!r}, row {row}: {what}", column=column, row=row
    )


def _to_number(values: pd.Series, column: Column, row_offset: int) -> pd.Series:
    """Numbers as float64 (NaN for gaps); text that is not a number is an error."""
    if pd.api.types.is_datetime64_any_dtype(
        values
    ) or pd.api.types.is_timedelta64_dtype(values):
        raise _fail(
            column.name,
            0,
            row_offset,
            f"a {values.dtype} value is not a number (expected {column.type})",
        )
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64)
    if pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64, copy=False)
    converted = pd.to_numeric(values, errors="coerce")
    _refuse(
        converted.isna() & values.notna(),
        values,
        column,
        row_offset,
        lambda v: f"{_show(v)} is not a number (expected {column.type})",
    )
    return converted.astype(np.float64)


def _refuse(bad, values: pd.Series, column: Column, row_offset: int, reason) -> None:
    """Raise for the first row where `bad` is true; `reason(value)` says why."""
    if bad.any():
        position = _first_bad(bad)
        raise _fail(column.name, position, row_offset, reason(values.iloc[position]))


def _cast(values: pd.Series, column: Column, row_offset: int) -> pd.Series:
    kind = column.type
    missing = f"missing value; the model takes no missing values ({kind} column)"
    if kind in _NUMERIC:
        target = _NUMERIC[kind]
        typed = pd.api.types.is_dtype_equal(values.dtype, target)
        numbers = values if typed else _to_number(values, column, row_offset)
        _refuse(numbers.isna(), values, column, row_offset, lambda _: missing)
        limit = np.finfo(np.float32 if kind == "float" else np.float64).max
        _refuse(
            ~(np.abs(numbers) <= limit),
            values,
            column,
            row_offset,
            lambda v: f"{_show(v)} is not a finite number that fits {kind}",
        )
        if typed:
            return values  # already right: the fast path for typed input
        if kind in ("long", "integer"):
            info = np.iinfo(target)
            whole = np.isfinite(numbers) & (numbers == np.floor(numbers))
            _refuse(
                ~whole,
                values,
                column,
                row_offset,
                lambda v: f"{_show(v)} is not a whole number ({kind} column)",
            )
            out_of_range = (numbers < info.min) | (numbers > info.max)
            _refuse(
                out_of_range,
                values,
                column,
                row_offset,
                lambda v: f"{_show(v)} does not fit {kind} ({info.min} to {info.max})",
            )
            if pd.api.types.is_integer_dtype(values):
                return values.astype(target)  # exact, no float round trip
        return numbers.astype(target)

    _refuse(values.isna(), values, column, row_offset, lambda _: missing)
    if kind == "string":
        if values.map(lambda v: isinstance(v, bytes)).any():
            try:
                values = values.map(
                    lambda v: v.decode("utf-8") if isinstance(v, bytes) else v
                )
            except UnicodeDecodeError:
                raise SchemaMismatch(
                    f"column {column.name!r}: a value is not valid UTF-8 text",
                    column=column.name,
                ) from None
        return values.astype(object).map(str)
    if kind == "boolean":
        if pd.api.types.is_bool_dtype(values):
            return values
        text = values.astype(str).str.strip().str.lower()
        mapping = {"true": True, "1": True, "1.0": True, "false": False, "0": False}
        mapped = text.map(mapping)
        _refuse(
            mapped.isna(),
            values,
            column,
            row_offset,
            lambda v: f"{_show(v)} is not true/false (boolean column)",
        )
        return mapped.astype(bool)
    return values


def conform(
    frame: pd.DataFrame, columns: list[Column] | None, row_offset: int = 0
) -> pd.DataFrame:
    """Return the model's input: signature columns only, in order, with their types.

    Args:
        frame: the rows to score; extra columns are allowed and left out.
        columns: the signature's columns (None: pass the frame through unchanged).
        row_offset: rows before this frame, so errors name the row of the whole input.

    Raises:
        SchemaMismatch: a column is missing, or a value is missing or of the wrong
            type; the message names the column (and row).
    """
    if columns is None:
        return frame
    present = set(map(str, frame.columns))
    missing = [c.name for c in columns if c.required and c.name not in present]
    if missing:
        expected = ", ".join(c.name for c in columns)
        names = ", ".join(repr(name) for name in missing)
        noun = "column" if len(missing) == 1 else "columns"
        raise SchemaMismatch(
            f"{noun} {names} {'is' if len(missing) == 1 else 'are'} missing; "
            f"the model expects: {expected}",
            column=missing[0],
        )
    duplicated = sorted({str(n) for n in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise SchemaMismatch(
            f"column {duplicated[0]!r} appears more than once; give each column once",
            column=duplicated[0],
        )
    wanted = [c for c in columns if c.name in present]
    if all(
        c.type in _NUMERIC and frame[c.name].dtype == _NUMERIC[c.type] for c in wanted
    ):
        # Fast path, typed input (Parquet, V2 tensors): one vectorised gap check.
        inputs = frame[[c.name for c in wanted]].reset_index(drop=True)
        if np.isfinite(inputs.to_numpy()).all():  # no gaps, no infinities
            return inputs
    data = {
        c.name: _cast(frame[c.name].reset_index(drop=True), c, row_offset)
        for c in columns
        if c.name in present
    }
    return pd.DataFrame(data)


def extra_columns(frame: pd.DataFrame, columns: list[Column] | None) -> list[str]:
    """Columns in `frame` the model does not use."""
    if columns is None:
        return []
    known = {c.name for c in columns}
    return [str(name) for name in frame.columns if str(name) not in known]
