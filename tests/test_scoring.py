"""Batch scoring against the real registry: validation, atomic output, provenance."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlferry import jobs, scoring
from mlferry.errors import EmptyInput, OutputBusy, SchemaMismatch
from mlferry.output import MANIFEST, SUCCESS_MARKER, Partition
from mlferry.sources import FileSource

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def run_file(settings, path: Path, model_uri: str = "models:/diabetes@champion", **kw):
    spec = jobs.JobSpec(name="t", model=model_uri, input=str(path))
    return jobs.run(spec, settings, **kw)


def final_dir(settings, job="t") -> Path:
    return settings.output_dir / job / f"run={settings.run_key}"


def test_scores_history_keeping_id_columns_beside_predictions(
    settings_for, demo_version, history
):
    settings = settings_for(chunk_rows=100)
    manifest = run_file(settings, history)

    out = pd.read_parquet(final_dir(settings) / "predictions.parquet")
    source = pd.read_csv(history)
    assert len(out) == len(source) == manifest["rows_in"] == manifest["rows_out"] == 442
    assert out["patient_id"].tolist() == source["patient_id"].tolist()
    import mlflow

    expected = mlflow.pyfunc.load_model(f"models:/diabetes/{demo_version}").predict(
        source[FEATURES]
    )
    np.testing.assert_allclose(out["prediction"].to_numpy(), expected)
    assert (final_dir(settings) / SUCCESS_MARKER).exists()


def test_manifest_records_model_input_and_timing(settings_for, demo_version, history):
    settings = settings_for()
    run_file(settings, history)
    manifest = json.loads((final_dir(settings) / MANIFEST).read_text())
    assert manifest["model"]["name"] == "diabetes"
    assert manifest["model"]["version"] == demo_version
    assert manifest["model"]["alias"] == "champion"
    assert manifest["model"]["run_id"]
    import hashlib

    assert (
        manifest["input"]["sha256"] == hashlib.sha256(history.read_bytes()).hexdigest()
    )
    assert manifest["rows_in"] == manifest["rows_out"] == 442
    assert manifest["duration_seconds"] >= 0
    assert manifest["started_at"] <= manifest["finished_at"]
    assert manifest["mlferry_version"]


def test_extra_id_column_gives_the_same_predictions(
    settings_for, demo_version, tmp_path
):
    frame = pd.read_csv(
        __import__("mlferry.demo", fromlist=["x"]).write_history(tmp_path / "h")
    ).head(5)
    plain = tmp_path / "plain.csv"
    frame[FEATURES].to_csv(plain, index=False)
    with_id = tmp_path / "with_id.csv"
    frame[["patient_id", *FEATURES]].to_csv(with_id, index=False)

    first = settings_for(run_key="a")
    run_file(first, plain)
    second = settings_for(run_key="b")
    run_file(second, with_id)
    a = pd.read_parquet(final_dir(first) / "predictions.parquet")
    b = pd.read_parquet(final_dir(second) / "predictions.parquet")
    np.testing.assert_array_equal(a["prediction"], b["prediction"])
    assert b["patient_id"].tolist() == frame["patient_id"].tolist()


def test_missing_column_fails_naming_it_and_writes_nothing(
    settings_for, demo_version, tmp_path
):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({name: [1.0] for name in FEATURES if name != "bmi"}).to_csv(
        bad, index=False
    )
    settings = settings_for()
    with pytest.raises(SchemaMismatch, match=r"column 'bmi' is missing"):
        run_file(settings, bad)
    assert not final_dir(settings).exists()
    assert list((settings.output_dir / "t").glob(".run=*.tmp-*")) == []


def test_bad_value_in_a_later_chunk_names_the_file_row(
    settings_for, demo_version, tmp_path
):
    frame = pd.DataFrame({name: np.arange(30, dtype=float) + 1 for name in FEATURES})
    frame = frame.astype(object)
    frame.loc[24, "bp"] = "high"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    settings = settings_for(chunk_rows=10)
    with pytest.raises(
        SchemaMismatch, match=r"column 'bp', row 25: 'high' is not a number"
    ):
        run_file(settings, bad)
    assert not final_dir(settings).exists()


def test_gap_in_an_integer_column_fails_on_row_two(
    settings_for, tenure_model, tmp_path
):
    data = tmp_path / "input.csv"
    data.write_text("tenure_months,monthly_charges\n12,70.5\n,30.0\n")
    settings = settings_for()
    with pytest.raises(
        SchemaMismatch, match=r"column 'tenure_months', row 2: missing value"
    ):
        run_file(settings, data, "models:/tenure@champion")
    assert not final_dir(settings).exists()

    data.write_text("tenure_months,monthly_charges\n12,70.5\n")
    run_file(settings, data, "models:/tenure@champion")
    assert len(pd.read_parquet(final_dir(settings) / "predictions.parquet")) == 1


def test_csv_for_an_int32_column_scores_like_the_model(
    settings_for, int32_model, tmp_path
):
    _, model = int32_model
    data = tmp_path / "x.csv"
    data.write_text("x\n1\n-1\n")
    settings = settings_for()
    run_file(settings, data, "models:/int32@champion")
    out = pd.read_parquet(final_dir(settings) / "predictions.parquet")
    expected = model.predict(pd.DataFrame({"x": np.array([1, -1], dtype=np.int32)}))
    np.testing.assert_allclose(out["prediction"], expected)

    data.write_text("x\n1\n3000000000\n")
    with pytest.raises(
        SchemaMismatch, match=r"column 'x', row 2: 3000000000 does not fit"
    ):
        run_file(settings_for(run_key="overflow"), data, "models:/int32@champion")


def test_header_only_csv_gives_an_empty_typed_output(
    settings_for, tenure_model, tmp_path
):
    data = tmp_path / "header_only.csv"
    data.write_text("tenure_months,monthly_charges\n")
    settings = settings_for()
    manifest = run_file(settings, data, "models:/tenure@champion")
    out = pd.read_parquet(final_dir(settings) / "predictions.parquet")
    assert list(out.columns) == ["tenure_months", "monthly_charges", "prediction"]
    assert len(out) == 0
    assert manifest["rows_out"] == 0


def test_header_only_parquet_gives_an_empty_output(
    settings_for, tenure_model, tmp_path
):
    data = tmp_path / "header_only.parquet"
    pd.DataFrame(
        {
            "tenure_months": pd.Series([], dtype="int64"),
            "monthly_charges": pd.Series([], dtype="float64"),
        }
    ).to_parquet(data)
    settings = settings_for()
    run_file(settings, data, "models:/tenure@champion")
    out = pd.read_parquet(final_dir(settings) / "predictions.parquet")
    assert len(out) == 0
    assert "prediction" in out.columns


def test_zero_byte_input_fails_and_leaves_no_output(
    settings_for, tenure_model, tmp_path
):
    data = tmp_path / "empty.csv"
    data.write_bytes(b"")
    settings = settings_for()
    with pytest.raises(EmptyInput, match=r"is empty \(0 bytes\)"):
        run_file(settings, data, "models:/tenure@champion")
    assert not final_dir(settings).exists()


def test_csv_output_format(settings_for, demo_version, history):
    settings = settings_for()
    run_file(settings, history, output_format="csv")
    out = pd.read_csv(final_dir(settings) / "predictions.csv")
    assert len(out) == 442
    assert "prediction" in out.columns


def test_rerun_with_the_same_key_replaces_the_output(
    settings_for, demo_version, history
):
    settings = settings_for()
    run_file(settings, history)
    first = json.loads((final_dir(settings) / MANIFEST).read_text())
    run_file(settings, history)
    second = json.loads((final_dir(settings) / MANIFEST).read_text())
    assert first["started_at"] != second["started_at"]
    assert sorted(p.name for p in (settings.output_dir / "t").iterdir()) == [
        ".run=test.lock",
        "run=test",
    ]


def test_failed_rerun_keeps_the_previous_complete_output(
    settings_for, demo_version, history, tmp_path
):
    settings = settings_for()
    run_file(settings, history)
    before = (final_dir(settings) / "predictions.parquet").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("age\n1\n")
    with pytest.raises(SchemaMismatch, match=r"missing"):
        run_file(settings, bad)
    assert (final_dir(settings) / "predictions.parquet").read_bytes() == before


def test_a_second_concurrent_run_of_the_same_key_is_refused(tmp_path):
    with (
        Partition(tmp_path, "job", "k"),
        pytest.raises(OutputBusy, match=r"another run"),
        Partition(tmp_path, "job", "k"),
    ):
        pass


def test_interrupted_swap_is_restored_on_the_next_run(tmp_path):
    parent = tmp_path / "job"
    (parent / ".run=k.old-1234").mkdir(parents=True)
    (parent / ".run=k.old-1234" / "predictions.parquet").write_text("previous")
    (parent / ".run=k.tmp-5678").mkdir()
    with Partition(tmp_path, "job", "k"):
        assert (parent / "run=k" / "predictions.parquet").read_text() == "previous"
        assert not (parent / ".run=k.tmp-5678").exists()


def test_file_source_reads_parquet_in_chunks(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"a": range(25)}).to_parquet(path)
    sizes = [len(chunk) for chunk in FileSource(path, chunk_rows=10).chunks()]
    assert sizes == [10, 10, 5]


def _big_parquet(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    pd.DataFrame({name: rng.uniform(1, 100, rows) for name in FEATURES}).to_parquet(
        path
    )
    return path


def test_sigkill_mid_write_leaves_no_output_and_rerun_matches_a_clean_run(
    settings_for, demo_version, tmp_path
):
    settings = settings_for()
    data = _big_parquet(tmp_path / "big.parquet", 400_000)
    env = dict(
        os.environ,
        MLFERRY_HOME=str(settings.home),
        MLFERRY_REGISTRY_PORT=str(settings.registry_port),
        MLFERRY_OUTPUT_DIR=str(tmp_path / "out"),
        MLFERRY_RUN_KEY="k",
        MLFERRY_CHUNK_ROWS="20000",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable,
        "-m",
        "mlferry.cli",
        "score",
        "--input",
        str(data),
        "--name",
        "big",
    ]
    parent = tmp_path / "out" / "big"

    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            staged = list(parent.glob(".run=k.tmp-*/predictions.parquet"))
            if staged and staged[0].stat().st_size > 0:
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("the run never started writing")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (parent / "run=k").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert [p.name for p in parent.iterdir() if p.name.startswith(".run=k.tmp")] == []

    clean_env = dict(env, MLFERRY_OUTPUT_DIR=str(tmp_path / "clean"))
    clean = subprocess.run(command, env=clean_env, capture_output=True, timeout=300)
    assert clean.returncode == 0, clean.stderr.decode()[-2000:]
    after_kill = pd.read_parquet(parent / "run=k" / "predictions.parquet")
    reference = pd.read_parquet(
        tmp_path / "clean" / "big" / "run=k" / "predictions.parquet"
    )
    pd.testing.assert_frame_equal(after_kill, reference)
    assert len(reference) == 400_000


def test_two_simultaneous_runs_leave_exactly_one_complete_output(
    settings_for, demo_version, history
):
    settings = settings_for()
    errors = []

    def attempt():
        try:
            run_file(settings, history)
        except OutputBusy as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    out = pd.read_parquet(final_dir(settings) / "predictions.parquet")
    assert len(out) == 442
    assert len(errors) <= 1
    assert (final_dir(settings) / SUCCESS_MARKER).exists()


def test_prediction_columns_name_multi_output_models():
    two = scoring.prediction_columns(np.array([[1, 2], [3, 4]]), 2)
    assert list(two.columns) == ["prediction_0", "prediction_1"]
    one = scoring.prediction_columns(pd.DataFrame({"y": [1.0]}), 1)
    assert list(one.columns) == ["prediction"]


def test_unreadable_inputs_fail_with_one_line_and_no_output(
    settings_for, demo_version, tmp_path
):
    from mlferry.errors import InputError

    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("a,b\n1,2\n")
    newlines = tmp_path / "blank.csv"
    newlines.write_text("\n\n\n")
    settings = settings_for()
    with pytest.raises(InputError, match=r"cannot be read as Parquet|not a readable"):
        run_file(settings, not_parquet)
    with pytest.raises(EmptyInput, match=r"has no header line"):
        run_file(settings, newlines)
    assert not final_dir(settings).exists()
