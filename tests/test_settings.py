"""Settings: env vars and flags, and the messages for bad values."""

import os

import pytest

from mlferry.errors import ConfigError
from mlferry.settings import available_cpus, load_settings


def test_flags_win_over_env(monkeypatch):
    monkeypatch.setenv("MLFERRY_CHUNK_ROWS", "500")
    assert load_settings().chunk_rows == 500
    assert load_settings(chunk_rows=7).chunk_rows == 7


def test_bad_value_names_variable_flag_and_value(monkeypatch):
    monkeypatch.setenv("MLFERRY_HTTP_PORT", "eighty")
    with pytest.raises(
        ConfigError, match=r"MLFERRY_HTTP_PORT \(--http-port\): got 'eighty'"
    ):
        load_settings()


def test_tracking_uri_comes_from_mlflows_own_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://registry.invalid:5000")
    assert load_settings().tracking_uri == "http://registry.invalid:5000"


def test_available_cpus_is_within_what_the_machine_has():
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
    assert 1 <= load_settings().score_workers <= 4
