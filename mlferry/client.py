"""A small client for the model service, on `requests`.

It speaks the Open Inference Protocol (V2) and MLflow's `/invocations`. Requests are
built from a pandas DataFrame using the model's own metadata (`/v2/models/NAME`), so
each column goes with the datatype the model declares (FP64 for a double column,
even when the values look like integers). Responses come back as a DataFrame,
together with the model version that answered.
"""

from dataclasses import dataclass
from math import isnan

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mlferry.errors import MlferryError

_PYTHON_TYPES = {"BOOL": bool, "BYTES": str}


class ServiceError(MlferryError):
    """The service refused a request (4xx) or failed (5xx)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Prediction:
    """Predictions with the name and version of the model that made them."""

    frame: pd.DataFrame
    model_name: str
    model_version: str | None


def _cast(value, datatype: str):
    if value is None or (isinstance(value, float) and isnan(value)):
        return None
    if datatype.startswith("FP"):
        return float(value)
    if datatype.startswith(("INT", "UINT")):
        return int(value)
    return _PYTHON_TYPES.get(datatype, lambda v: v)(value)


class ModelClient:
    """Calls one model on an MLServer (or any V2 server with /invocations)."""

    def __init__(
        self, url: str, model: str, timeout: float = 10.0, connect_retries: int = 3
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.session = requests.Session()
        # Retry only when no connection was made: never resend an inference request
        # a server may have received.
        retry = Retry(
            total=connect_retries,
            connect=connect_retries,
            read=0,
            status=0,
            other=0,
            backoff_factor=0.3,
            allowed_methods=None,
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        self._metadata: dict | None = None

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(
                method, f"{self.url}{path}", timeout=self.timeout, **kwargs
            )
        except requests.ConnectionError as exc:
            raise MlferryError(
                f"cannot reach the model service at {self.url}: {exc}"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("error") or body.get("detail") or body
            except ValueError:
                message = response.text[:500]
            raise ServiceError(response.status_code, str(message))
        return response

    def ready(self) -> bool:
        """True when the model itself is loaded and ready."""
        try:
            return (
                self.session.get(
                    f"{self.url}/v2/models/{self.model}/ready", timeout=self.timeout
                ).status_code
                == 200
            )
        except requests.RequestException:
            return False

    def metadata(self) -> dict:
        """The model's V2 metadata: name, versions, inputs with datatypes and shapes."""
        if self._metadata is None:
            self._metadata = self._call("GET", f"/v2/models/{self.model}").json()
        return self._metadata

    def build_request(self, frame: pd.DataFrame) -> dict:
        """A V2 inference request for `frame`, one input per model input."""
        inputs = []
        declared = self.metadata().get("inputs") or []
        missing = [i["name"] for i in declared if i["name"] not in frame.columns]
        if missing:
            raise MlferryError(
                f"the frame lacks {', '.join(missing)}; the model expects: "
                f"{', '.join(i['name'] for i in declared)}"
            )
        for spec in declared:
            datatype = spec["datatype"]
            values = [_cast(v, datatype) for v in frame[spec["name"]].tolist()]
            inputs.append(
                {
                    "name": spec["name"],
                    "datatype": datatype,
                    "shape": [len(values)],
                    "data": values,
                }
            )
        return {"inputs": inputs}

    def infer(self, frame: pd.DataFrame) -> Prediction:
        """Predict through `/v2/models/NAME/infer`."""
        body = self._call(
            "POST", f"/v2/models/{self.model}/infer", json=self.build_request(frame)
        ).json()
        columns = {}
        for output in body["outputs"]:
            data = output["data"]
            shape = output.get("shape") or [len(data)]
            if len(shape) == 2 and shape[1] > 1:
                for k in range(shape[1]):
                    columns[f"{output['name']}_{k}"] = data[k :: shape[1]]
            else:
                columns[output["name"]] = data
        frame_out = pd.DataFrame(columns)
        if len(frame_out.columns) == 1:
            frame_out.columns = ["prediction"]
        return Prediction(frame_out, body["model_name"], body.get("model_version"))

    def invocations(self, frame: pd.DataFrame, orient: str = "split") -> pd.DataFrame:
        """Predict through MLflow's `/invocations` (orient: split, records or csv)."""
        if orient == "csv":
            response = self._call(
                "POST",
                "/invocations",
                data=frame.to_csv(index=False),
                headers={"Content-Type": "text/csv"},
            )
        else:
            key = {"split": "dataframe_split", "records": "dataframe_records"}[orient]
            payload = frame.to_dict(orient="split" if orient == "split" else "records")
            if orient == "split":
                payload.pop("index", None)
            response = self._call("POST", "/invocations", json={key: payload})
        predictions = response.json()["predictions"]
        if predictions and isinstance(predictions[0], dict):
            return pd.DataFrame(predictions)
        return pd.DataFrame({"prediction": predictions})
