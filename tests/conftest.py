"""Shared fixtures: one real embedded registry and one demo model per test session."""

import os
import socket
from pathlib import Path

import pandas as pd
import pytest

from mlferry import demo, registry
from mlferry.embedded import EmbeddedRegistry
from mlferry.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory) -> EmbeddedRegistry:
    """A real `mlflow server` on a free loopback port, stopped after the session."""
    home = tmp_path_factory.mktemp("home")
    server = EmbeddedRegistry(home / "registry", "127.0.0.1", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_home(registry_server) -> Path:
    return registry_server.root.parent


@pytest.fixture(scope="session", autouse=True)
def _no_stray_registry_env():
    """Tests choose their registry; nothing from the caller's shell leaks in."""
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith(("MLFLOW_", "MLFERRY_"))
    }
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _forget_registry_after_each_test():
    """`connect` exports MLFLOW_TRACKING_URI (as MLflow does); undo it per test."""
    yield
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)


@pytest.fixture
def settings_for(registry_server, session_home, tmp_path, monkeypatch):
    """Settings pointing at the session registry, with a fresh output folder."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def make(**overrides):
        values = {
            "home": session_home,
            "registry_port": registry_server.port,
            "input_dir": tmp_path / "in",
            "output_dir": tmp_path / "out",
            "run_key": "test",
        } | overrides
        return load_settings(**values)

    return make


@pytest.fixture(scope="session")
def demo_version(registry_server, session_home) -> str:
    """The demo model, registered once per session as diabetes@champion."""
    settings = load_settings(home=session_home, registry_port=registry_server.port)
    registry.connect(settings)
    return demo.train_and_register()


@pytest.fixture(scope="session")
def history(tmp_path_factory) -> Path:
    """The demo's historical input table."""
    return demo.write_history(tmp_path_factory.mktemp("history"))


def register_model(
    name: str, frame: pd.DataFrame, target, alias: str = "champion", model=None
):
    """Register a small scikit-learn model whose signature comes from `frame`."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    model = (model or LinearRegression()).fit(frame, target)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, model.predict(frame)),
            registered_model_name=name,
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            skops_trusted_types=demo._trusted_types(model),
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version, model


@pytest.fixture(scope="session")
def tenure_model(registry_server, session_home):
    """A model with signature `tenure_months: long, monthly_charges: double`."""
    settings = load_settings(home=session_home, registry_port=registry_server.port)
    registry.connect(settings)
    frame = pd.DataFrame(
        {
            "tenure_months": [1, 12, 24, 36, 48],
            "monthly_charges": [20.0, 70.5, 30.0, 90.0, 55.5],
        }
    )
    version, model = register_model("tenure", frame, [0.1, 0.4, 0.3, 0.8, 0.6])
    return version, model


@pytest.fixture(scope="session")
def int32_model(registry_server, session_home):
    """A model with signature `x: integer` (int32)."""
    settings = load_settings(home=session_home, registry_port=registry_server.port)
    registry.connect(settings)
    frame = pd.DataFrame({"x": pd.array([1, 2, 3, -4], dtype="int32")})
    version, model = register_model("int32", frame, [2.0, 4.0, 6.0, -8.0])
    return version, model


@pytest.fixture(scope="session")
def color_model(registry_server, session_home):
    """A model with signature `color: string, size: double`; red and blue differ."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    settings = load_settings(home=session_home, registry_port=registry_server.port)
    registry.connect(settings)
    frame = pd.DataFrame(
        {"color": ["red", "blue", "red", "blue"], "size": [1.0, 1.0, 2.0, 2.0]}
    )
    pipeline = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["color"]), remainder="passthrough"
        ),
        LinearRegression(),
    )
    return register_model("color", frame, [10.0, 0.0, 11.0, 1.0], model=pipeline)
