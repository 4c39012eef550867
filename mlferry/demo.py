"""The embedded default: a demo model trained on data that ships with scikit-learn.

`load_diabetes(scaled=False)` holds 442 patients with 10 features in real units
(age, sex, bmi, bp, s1..s6); the target is disease progression a year later. Real
units keep what-if questions readable ("what if BMI went from 32 to 27?").
"""

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

MODEL_NAME = "diabetes"
ALIAS = "champion"
HISTORY_FILE = "diabetes-history.csv"
EXPERIMENT = "mlferry-demo"


def dataset() -> tuple[pd.DataFrame, pd.Series]:
    """The diabetes features (float64, real units) and target."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    return bunch.data.astype("float64"), bunch.target.rename("progression")


def write_history(dest: Path) -> Path:
    """Write the historical input table: a patient id, the features, the outcome."""
    features, target = dataset()
    table = features.copy()
    table.insert(0, "patient_id", [f"P{i:04d}" for i in range(1, len(table) + 1)])
    table["progression"] = target
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / HISTORY_FILE
    table.to_csv(path, index=False)
    log.info("wrote %d historical rows to %s", len(table), path)
    return path


def _trusted_types(model) -> list[str]:
    """The scikit-learn types skops must be told to trust to save this model."""
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


def train_and_register(name: str = MODEL_NAME, alias: str = ALIAS) -> str:
    """Train the demo model, register it as a new version of `name`, set `alias`.

    Returns:
        The new version number.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split

    features, target = dataset()
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.2, random_state=42
    )
    params = {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.05}
    model = GradientBoostingRegressor(random_state=0, **params).fit(x_train, y_train)
    r2 = r2_score(y_test, model.predict(x_test))

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="diabetes-gbr") as run:
        mlflow.log_params(params)
        mlflow.log_metric("holdout_r2", r2)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train, model.predict(x_train)),
            input_example=x_train.head(3),
            registered_model_name=name,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=_trusted_types(model),
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    log.info(
        "registered %s version %s (run %s, holdout R² %.2f); alias %s → %s",
        name,
        version,
        run.info.run_id,
        r2,
        alias,
        version,
    )
    return version


def promote(name: str, version: str, alias: str = ALIAS) -> None:
    """Point `alias` at `version` of `name`."""
    import mlflow

    client = mlflow.MlflowClient()
    client.get_model_version(name, version)  # fails clearly if it does not exist
    client.set_registered_model_alias(name, alias, version)
    log.info("alias %s of %s → version %s", alias, name, version)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_round_trip(settings, whatif_spec: Path) -> pd.DataFrame:
    """Serve the model, ask it the what-if questions with `requests`, stop it.

    The scenario table is built exactly as the batch what-if job builds it, so the
    two answers can be compared row by row.

    Returns:
        The scenarios with the service's V2 and /invocations predictions.
    """
    from mlferry import jobs, serving, whatif
    from mlferry.client import ModelClient

    ports = {name: _free_port() for name in ("http_port", "grpc_port", "metrics_port")}
    settings = settings.model_copy(update={"host": "127.0.0.1", **ports})
    spec = jobs.load_spec(whatif_spec)
    config = serving.prepare(settings, spec.model)
    log_file = settings.serve_dir / "mlserver.log"
    with serving.Server(config, log_file=log_file) as server:
        client = ModelClient(server.url, config.pinned.name)
        columns = [
            whatif.Column(i["name"], "double") for i in client.metadata()["inputs"]
        ]
        base = whatif.baseline(spec.whatif.baseline, columns, settings.input_dir)
        table = whatif.scenarios(base, spec.whatif.grid, columns)
        answer = client.infer(table)
        table["v2"] = answer.frame["prediction"].to_numpy()
        table["invocations"] = client.invocations(table[[c.name for c in columns]])[
            "prediction"
        ].to_numpy()
        table.attrs["model_name"] = answer.model_name
        table.attrs["model_version"] = answer.model_version
        table.attrs["url"] = server.url
    return table
