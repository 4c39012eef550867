"""MLServer runtime: MLflow's runtime with requests checked against the signature.

Out of the box, MLServer answers most client mistakes (a missing column, text in a
number column, a shape that does not match its data, a body that is not UTF-8) with
HTTP 500 and a Python exception, so a client bug looks like an outage and is retried.
This runtime decodes and checks every request first, with the same rules as the batch
job (`mlferry.schema`), and answers a mistake with 400/415 and a JSON reason naming the
field. The model itself is still loaded and called by MLflow's runtime.
"""

import inspect
import json
from io import StringIO
from math import prod

import pandas as pd
from fastapi import Depends, Header, Request, Response
from mlflow.pyfunc.scoring_server import predictions_to_json
from mlserver.errors import MLServerError
from mlserver.handlers import custom_handler
from mlserver.logging import logger as log  # configured by MLServer, workers too
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from mlserver_mlflow import MLflowRuntime
from mlserver_mlflow.codecs import TensorDictCodec

from mlferry.errors import SchemaMismatch
from mlferry.schema import Column, columns_of, conform, extra_columns

INVOCATION_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_NUMERIC_TYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}
# JSON scalars: a V2 input whose values are all of these needs no flattening.
_SCALARS = {int, float, bool, str, bytes, type(None)}
_NUMBERS = {int, float, bool, type(None)}
# Signature types `conform` casts to exactly the dtype MLflow's own check would.
_EXACT_TYPES = {"double", "float", "long", "integer", "boolean"}


class BadRequest(MLServerError):
    """A client mistake: answered with a 4xx and a one-line JSON reason."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message, status_code=status_code)


def _flatten(data) -> list:
    if isinstance(data, list | tuple):
        return [item for part in data for item in _flatten(part)]
    return [data]


def _text(value, name: str):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r}: a value is not valid UTF-8 text"
            ) from None
    return value


def _values(data) -> tuple[list, set]:
    """A V2 input's values as a flat list, with the set of their Python types."""
    values = data if isinstance(data, list) else _flatten(data)
    kinds = set(map(type, values))
    if not kinds <= _SCALARS:  # nested lists ([N, 1]) or anything unusual
        values = _flatten(values)
        kinds = set(map(type, values))
    return values, kinds


def frame_from_v2(payload: InferenceRequest) -> pd.DataFrame:
    """One column per V2 input; shapes [N] and [N, 1] are both one column of N rows."""
    columns: dict[str, list] = {}
    rows: int | None = None
    for item in payload.inputs:
        name = item.name
        shape = list(item.shape)
        values, kinds = _values(item.data.root)
        if name in columns:
            raise BadRequest(f"input {name!r} appears more than once")
        if not shape:
            raise BadRequest(
                f"input {name!r}: shape [] is not a column; use [N] or [N, 1]"
            )
        if any(size < 0 for size in shape) or prod(shape) != len(values):
            raise BadRequest(
                f"input {name!r}: shape {shape} needs {prod(shape)} values, "
                f"data has {len(values)}"
            )
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise BadRequest(
                f"input {name!r}: shape {shape} is not a column; send one input per "
                "column with shape [N] or [N, 1]"
            )
        if rows is not None and shape[0] != rows:
            raise BadRequest(
                f"input {name!r} has {shape[0]} rows; the inputs before it have {rows}"
            )
        rows = shape[0]
        if item.datatype == "BYTES":
            values = [_text(value, name) for value in values]
        elif item.datatype in _NUMERIC_TYPES and not kinds <= _NUMBERS:
            for value in values:
                if value is not None and not isinstance(value, int | float | bool):
                    raise BadRequest(
                        f"input {name!r}: {value!r} is not a number "
                        f"(datatype {item.datatype})"
                    )
        columns[name] = values
    if rows:  # from lists: each column's dtype as a Series would infer it, faster
        frame = pd.DataFrame(columns)
    else:
        frame = pd.DataFrame({name: pd.Series(v) for name, v in columns.items()})
    for name, values in columns.items():
        if values and all(value is None for value in values):
            frame[name] = frame[name].astype("float64")  # all-null: NaN, not object
    return frame


def frame_from_invocation(body: bytes, content_type: str, columns) -> pd.DataFrame:
    """The rows of an MLflow-style /invocations request."""
    mime, *params = [part.strip() for part in content_type.split(";")]
    mime = mime.lower()  # media types are case-insensitive
    options = {
        key.strip().lower(): value.strip()
        for key, _, value in (part.partition("=") for part in params if part)
    }
    if "format" in options:
        raise BadRequest(
            f"the content-type parameter format={options['format']} (MLflow 1.x) is "
            "not supported; send application/json with one of the keys "
            f"{', '.join(INVOCATION_KEYS)}, or text/csv"
        )
    if options.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        raise BadRequest(
            f"charset {options['charset']} is not supported; use utf-8", 415
        )
    if mime not in ("application/json", "text/csv"):
        raise BadRequest(
            f"content type {mime or '(none)'!r} is not supported; use application/json "
            "or text/csv",
            415,
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise BadRequest("the body is empty")

    if mime == "text/csv":
        try:
            return pd.read_csv(StringIO(text))
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise BadRequest(f"the CSV body cannot be read: {exc}") from None

    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON at line {exc.lineno} column {exc.colno} "
            f"(char {exc.pos}): {exc.msg}"
        ) from None
    keys = set(document) - {"params"} if isinstance(document, dict) else set()
    if len(keys) != 1 or not keys <= set(INVOCATION_KEYS):
        found = (
            ", ".join(sorted(keys)) if isinstance(document, dict) else "not an object"
        )
        raise BadRequest(
            f"the JSON body needs exactly one of the keys {', '.join(INVOCATION_KEYS)} "
            f"(found: {found or 'none'})"
        )
    key = keys.pop()
    data = document[key]
    try:
        if key == "dataframe_split":
            if not isinstance(data, dict) or "data" not in data:
                raise BadRequest("dataframe_split needs 'columns' and 'data'")
            return pd.DataFrame(data["data"], columns=data.get("columns"))
        if isinstance(data, dict):
            return pd.DataFrame({name: _flatten(value) for name, value in data.items()})
        if isinstance(data, list) and data and not isinstance(data[0], dict):
            names = [c.name for c in columns] if columns else None
            return pd.DataFrame(data, columns=names)
        return pd.DataFrame.from_records(data)
    except BadRequest:
        raise
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{key}: the rows cannot be read as a table: {exc}") from None


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _direct_predict(model, columns: list[Column] | None):
    """The model's own predict, for when MLflow's input check would only repeat ours.

    After `conform`, the input has exactly the signature's columns, in order, with
    their dtypes and no gaps; pyfunc's schema enforcement would check all that again
    (about 0.8 ms a call). That holds for signatures of number and boolean columns
    with no params schema, where pyfunc hands the frame to the flavour unchanged.
    Anything else (other column types, params, type-hinted models) returns None and
    keeps the full pyfunc path.
    """
    if not columns or any(c.type not in _EXACT_TYPES for c in columns):
        return None
    metadata = model.metadata
    if metadata.get_params_schema() is not None:
        return None
    for check in ("_is_signature_from_type_hint", "_is_type_hint_from_example"):
        if getattr(metadata, check, lambda: True)():  # unknown: assume it matters
            return None
    predict = getattr(model._model_impl, "predict", None)  # MLflow's stable dev API
    if predict is None:
        return None
    accepts = inspect.signature(predict).parameters.get("params")
    if accepts and accepts.kind != inspect.Parameter.VAR_KEYWORD:
        return lambda inputs: predict(inputs, params=None)
    return predict


class MlferryRuntime(MLflowRuntime):
    """The MLflow runtime, with every request checked before the model sees it."""

    async def load(self) -> bool:
        loaded = await super().load()
        self._columns: list[Column] | None = columns_of(self._signature)
        extra = (
            (self._settings.parameters.extra or {}) if self._settings.parameters else {}
        )
        self._direct = _direct_predict(self._model, self._columns)
        pin = extra.get("pin", {})
        uri = await get_model_uri(self._settings)
        described = (
            f" ({pin['model_uri']}, run {pin.get('run_id')})"
            if pin.get("model_uri")
            else ""
        )
        log.info(
            "loaded model %s version %s%s from %s",
            self.name,
            self.version,
            described,
            uri,
        )
        return loaded

    def _check(self, frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) == 0:
            raise BadRequest("the request has no rows to predict")
        extra = extra_columns(frame, self._columns)
        if extra:
            log.warning("ignoring inputs the model does not use: %s", ", ".join(extra))
        try:
            return conform(frame, self._columns)
        except SchemaMismatch as exc:
            raise BadRequest(str(exc)) from None

    def _predict(self, inputs: pd.DataFrame, params: dict | None = None):
        """Predict checked inputs; pyfunc's repeat check only where it can matter."""
        if (
            self._direct is not None
            and params is None
            and len(inputs.columns) == len(self._columns)
        ):
            return self._direct(inputs)
        return self._model.predict(inputs, params=params)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self._columns is None:  # no column signature: MLflow's own decoding
            return await super().predict(payload)
        inputs = self._check(frame_from_v2(payload))
        params = None
        if payload.parameters and payload.parameters.model_extra:
            params = {
                key: value
                for key, value in payload.parameters.model_extra.items()
                if key not in ("content_type", "headers")
            } or None
        output = self._predict(inputs, params)
        return self.encode_response(output, default_codec=TensorDictCodec)

    # Same route as MLflow's runtime; this method replaces its handler.
    @custom_handler(rest_path="/invocations")
    async def invocations(
        self,
        raw_body: bytes = Depends(_raw_body),
        content_type: str = Header(default=""),
    ) -> Response:
        """MLflow's scoring protocol, with the same checks as the V2 endpoint."""
        frame = frame_from_invocation(raw_body, content_type, self._columns)
        if self._columns is None:
            predictions = self._model.predict(frame)
        else:
            predictions = self._predict(self._check(frame))
        result = StringIO()
        predictions_to_json(predictions, result)
        return Response(content=result.getvalue(), media_type="application/json")
