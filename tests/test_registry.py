"""Registry connection and models:/ resolution against real MLflow servers."""

import time

import pytest
from conftest import free_port

from mlferry import registry
from mlferry.embedded import EmbeddedRegistry
from mlferry.errors import (
    ConfigError,
    ModelNotFound,
    RegistryAuthError,
    RegistryUnreachable,
)
from mlferry.registry import ModelRef

ADMIN_PASSWORD = "correct-horse-battery-staple"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/churn-model@champion", ModelRef("churn-model", alias="champion")),
        ("models:/churn-model/2", ModelRef("churn-model", version="2")),
        ("models:/churn-model/Production", ModelRef("churn-model", stage="Production")),
    ],
)
def test_model_ref_splits_alias_version_and_stage(uri, expected):
    assert ModelRef.parse(uri) == expected


@pytest.mark.parametrize(
    "uri", ["diabetes", "models:/", "models:/a@b/c", "runs:/x/model"]
)
def test_model_ref_rejects_what_it_cannot_read(uri):
    with pytest.raises(ConfigError, match=r"is not understood"):
        ModelRef.parse(uri)


def test_resolve_alias_pins_the_version_it_points_to(settings_for, demo_version):
    registry.connect(settings_for())
    pinned = registry.resolve("models:/diabetes@champion")
    assert (pinned.name, pinned.version, pinned.alias) == (
        "diabetes",
        demo_version,
        "champion",
    )
    assert pinned.pinned_uri == f"models:/diabetes/{demo_version}"
    assert pinned.describe().startswith(f"diabetes@champion → version {demo_version}")


def test_resolve_explicit_version(settings_for, demo_version):
    registry.connect(settings_for())
    assert registry.resolve(f"models:/diabetes/{demo_version}").version == demo_version


def test_resolve_missing_alias_names_it_and_lists_the_existing_ones(
    settings_for, demo_version
):
    registry.connect(settings_for())
    with pytest.raises(
        ModelNotFound, match=r"'diabetes' has no alias 'ghost'.*champion"
    ):
        registry.resolve("models:/diabetes@ghost")


def test_resolve_empty_stage_says_so(settings_for, demo_version):
    registry.connect(settings_for())
    with pytest.raises(ModelNotFound, match=r"no version in stage 'Production'"):
        registry.resolve("models:/diabetes/Production")


def test_resolve_missing_version_lists_versions(settings_for, demo_version):
    registry.connect(settings_for())
    with pytest.raises(ModelNotFound, match=r"has no version 999; .*versions"):
        registry.resolve("models:/diabetes/999")


def test_resolve_missing_model_lists_registered_models(settings_for, demo_version):
    registry.connect(settings_for())
    with pytest.raises(ModelNotFound, match=r"'churn' does not exist.*diabetes"):
        registry.resolve("models:/churn@champion")


def test_connect_without_tracking_uri_explains_how_to_start_the_registry(tmp_path):
    from mlferry.settings import load_settings

    settings = load_settings(home=tmp_path, registry_port=free_port())
    with pytest.raises(
        RegistryUnreachable,
        match=r"MLFLOW_TRACKING_URI is not set.*"
        r"mlferry registry start",
    ):
        registry.connect(settings)
    assert not (tmp_path / "mlflow.db").exists()


def test_connect_to_a_dead_registry_fails_within_seconds_naming_the_host(tmp_path):
    from mlferry.settings import load_settings

    dead = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(home=tmp_path, tracking_uri=dead, registry_timeout=3)
    started = time.monotonic()
    with pytest.raises(
        RegistryUnreachable, match=r"registry at 127\.0\.0\.1 did not answer"
    ):
        registry.connect(settings)
    assert time.monotonic() - started < 30


def test_fetch_writes_model_and_pin_file_and_reuses_it(
    settings_for, demo_version, tmp_path
):
    registry.connect(settings_for())
    pinned = registry.resolve("models:/diabetes@champion")
    dest = registry.fetch(pinned, tmp_path / "model")
    assert (dest / "MLmodel").exists()
    assert registry.read_pin(dest) == pinned
    marker = dest / "MLmodel"
    before = marker.stat().st_mtime_ns
    registry.fetch(pinned, dest)
    assert marker.stat().st_mtime_ns == before


def test_read_pin_refuses_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match=r"not an MLflow model folder"):
        registry.read_pin(tmp_path)


# -- an authenticated registry (MLflow's basic-auth app stands in for DagsHub) ------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    server = EmbeddedRegistry(
        tmp_path_factory.mktemp("auth") / "registry", "127.0.0.1", free_port()
    )
    server.start(
        app_name="basic-auth",
        env={
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret-key-0123456789",
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        },
    )
    yield server
    server.stop()


@pytest.fixture
def auth_settings(auth_server, tmp_path, monkeypatch):
    from mlferry.settings import load_settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.url)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials of the caller
    return load_settings(home=tmp_path, registry_timeout=5)


def test_auth_correct_credentials_pass(auth_settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    registry.connect(auth_settings)
    with pytest.raises(ModelNotFound, match=r"'diabetes' does not exist"):
        registry.resolve("models:/diabetes@champion")


def test_auth_unset_password_is_reported_before_any_request(auth_settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    with pytest.raises(RegistryAuthError, match=r"MLFLOW_TRACKING_PASSWORD is empty"):
        registry.connect(auth_settings)


def test_auth_wrong_token_fails_fast_naming_the_host_not_the_secret(
    auth_settings, auth_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-token-value-1234")
    started = time.monotonic()
    with pytest.raises(
        RegistryAuthError, match=r"authentication to 127\.0\.0\.1 failed"
    ) as info:
        registry.connect(auth_settings)
    assert time.monotonic() - started < 10
    assert "wrong-token-value-1234" not in str(info.value)


def test_auth_no_credentials_is_an_auth_error(auth_settings, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(RegistryAuthError, match=r"HTTP 401\) without credentials"):
        registry.connect(auth_settings)


def test_auth_token_with_trailing_newline_is_trimmed(auth_settings, monkeypatch):
    # A Kubernetes Secret made from a file keeps the file's final newline.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD + "\n")
    registry.connect(auth_settings)
    with pytest.raises(ModelNotFound, match=r"does not exist"):
        registry.resolve("models:/diabetes@champion")


def test_auth_credentials_file_serves_tracking_and_registry_alike(
    auth_settings, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = admin\n"
        f"mlflow_tracking_password = {ADMIN_PASSWORD}\n"
    )
    registry.connect(auth_settings)  # the preflight (plain HTTP) is authenticated
    with pytest.raises(ModelNotFound, match=r"does not exist"):
        registry.resolve("models:/diabetes@champion")  # and so is MLflow's client


def test_concurrent_fetches_of_one_version_both_succeed(
    settings_for, demo_version, tmp_path
):
    import threading

    registry.connect(settings_for())
    pinned = registry.resolve("models:/diabetes@champion")
    dest = tmp_path / "cache" / "diabetes" / pinned.version
    errors = []

    def fetch():
        try:
            registry.fetch(pinned, dest)
        except Exception as exc:  # any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert (dest / "MLmodel").exists()
    leftovers = [p.name for p in dest.parent.iterdir() if p.name != ".1.lock"]
    assert leftovers == ["1"]


def test_fetch_replaces_a_copy_without_its_model(settings_for, demo_version, tmp_path):
    registry.connect(settings_for())
    pinned = registry.resolve("models:/diabetes@champion")
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / registry.PIN_FILE).write_text(__import__("json").dumps(pinned.to_dict()))
    registry.fetch(pinned, dest)
    assert (dest / "MLmodel").exists()
