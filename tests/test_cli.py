"""The `mlferry` command as a person or a scheduler runs it: exit codes and messages."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port


@pytest.fixture
def run(registry_server, session_home, tmp_path):
    """Run `mlferry ARGS` in a child process against the session registry."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLFERRY_"))
    }
    env |= {
        "MLFERRY_HOME": str(session_home),
        "MLFERRY_REGISTRY_PORT": str(registry_server.port),
        "MLFERRY_OUTPUT_DIR": str(tmp_path / "out"),
        "MLFERRY_RUN_KEY": "cli",
    }

    def invoke(*args, **extra_env):
        return subprocess.run(
            [sys.executable, "-m", "mlferry", *args],
            env=env | extra_env,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )

    return invoke


def test_score_job_runs_end_to_end_and_prints_where(
    run, demo_version, history, tmp_path
):
    result = run(
        "score",
        "--job",
        str(ROOT / "jobs" / "diabetes-history.yaml"),
        MLFERRY_INPUT_DIR=str(history.parent),
    )
    assert result.returncode == 0, result.stderr
    assert f"442 rows scored by diabetes version {demo_version}" in result.stdout
    assert "diabetes@champion → version" in result.stderr
    assert (tmp_path / "out" / "diabetes-history" / "run=cli" / "_SUCCESS").exists()


def test_model_uri_env_overrides_the_job_and_a_ghost_alias_exits_nonzero(
    run, demo_version, history, tmp_path
):
    result = run(
        "score",
        "--job",
        str(ROOT / "jobs" / "diabetes-history.yaml"),
        MLFERRY_INPUT_DIR=str(history.parent),
        MLFERRY_MODEL_URI="models:/diabetes@ghost",
    )
    assert result.returncode == 3
    assert "model 'diabetes' has no alias 'ghost'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "diabetes-history").exists()


def test_bad_input_exits_nonzero_naming_column_and_row(run, demo_version, tmp_path):
    data = tmp_path / "bad.csv"
    cols = "age,sex,bmi,bp,s1,s2,s3,s4,s5,s6"
    data.write_text(f"{cols}\n" + "1,1,1,1,1,1,1,1,1,1\n" + "1,1,fat,1,1,1,1,1,1,1\n")
    result = run("score", "--input", str(data))
    assert result.returncode == 4
    assert "column 'bmi', row 2: 'fat' is not a number" in result.stderr
    assert not (tmp_path / "out" / "bad" / "run=cli").exists()


def test_dead_registry_exits_nonzero_without_leaking_the_password(run, tmp_path):
    result = run(
        "resolve",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
        MLFLOW_TRACKING_USERNAME="someone",
        MLFLOW_TRACKING_PASSWORD="s3cret-token-value",
        MLFERRY_REGISTRY_TIMEOUT="2",
    )
    assert result.returncode == 3
    assert "registry at 127.0.0.1 did not answer" in result.stderr
    assert "s3cret-token-value" not in result.stderr + result.stdout


def test_bad_setting_names_the_variable(run):
    result = run("score", "--input", "x.csv", MLFERRY_CHUNK_ROWS="lots")
    assert result.returncode != 0
    assert "MLFERRY_CHUNK_ROWS (--chunk-rows): got 'lots'" in result.stderr


def test_resolve_prints_the_pinned_version(run, demo_version):
    result = run("resolve")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == demo_version


def test_promote_moves_the_alias(run, demo_version, tenure_model):
    version, _ = tenure_model
    result = run("promote", "tenure", version, "--alias", "staging")
    assert result.returncode == 0, result.stderr
    assert (
        json.loads(run("resolve", "--model-uri", "models:/tenure@staging").stdout)[
            "version"
        ]
        == version
    )
    missing = run("promote", "tenure", "999", "--alias", "staging")
    assert missing.returncode != 0
    assert "cannot move staging of tenure to 999" in missing.stderr


def test_whatif_flags_build_a_grid(run, demo_version, history, tmp_path):
    result = run(
        "whatif",
        "--baseline",
        str(history),
        "--vary",
        "bmi=20:30:3",
        "--set",
        "age=60",
        "--no-plot",
    )
    assert result.returncode == 0, result.stderr
    assert "3 rows scored" in result.stdout
    bad = run("whatif", "--vary", "bmi=20-30")
    assert bad.returncode == 2
    assert "expected FEATURE=START:STOP:NUM" in bad.stderr


def test_json_logs_are_one_object_per_line(run, demo_version):
    result = run("--log-format", "json", "resolve")
    assert result.returncode == 0
    lines = [
        json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")
    ]
    assert any("resolved diabetes@champion" in line["message"] for line in lines)


def test_demo_serve_answers_the_whatif_like_the_batch_job(
    run, demo_version, history, tmp_path
):
    env = {
        "MLFERRY_INPUT_DIR": str(history.parent),
        "MLFERRY_SCRATCH_DIR": str(tmp_path / "serve"),
    }
    job = str(ROOT / "jobs" / "diabetes-whatif.yaml")
    assert run("score", "--job", job, **env).returncode == 0
    result = run("demo-serve", "--job", job, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"answered as diabetes version {demo_version} (72 scenarios)" in result.stdout
    )
    assert "same answers as the batch what-if" in result.stdout
    assert result.stdout.rstrip().endswith("yes")
