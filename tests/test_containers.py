"""The real image on the local Docker engine, run as the Kubernetes manifests say.

The image is built once per session by scripts/build-image.sh from the session
registry's demo model (as `make image` does, under a test-only name and build folder).
The manifests are rendered as `make deploy` renders them (scripts/k8s.sh render, for
that image), and each container spec is turned into `docker run` options by
tests/pod_docker.py: user, read-only root, dropped capabilities, no privilege
escalation, memory and CPU limits, emptyDirs as tmpfs, env, ports, the grace period.
Then: the server answers its probes and predictions, the batch job writes its
partition (or fails cleanly), and the registry overlay's init container fetches the
pinned model that the batch container then uses.

Every container is removed by its ID, whatever happens. Nothing is pulled or pushed.
The mapping itself is unit-tested first; it needs no engine.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from conftest import ROOT, free_port
from pod_docker import Unsupported, docker_run_args, expand, memory_bytes, millicpus
from test_manifests import BATCH, IMAGE_ENV, SERVER, pod_templates

from mlferry.client import ModelClient, ServiceError
from mlferry.scoring import load_model
from mlferry.settings import load_settings

# A first build on a fresh machine makes the base image and installs the lock.
pytestmark = pytest.mark.timeout(1800)

TEST_IMAGE = "mlferry-test"
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
BASH = shutil.which("bash") or "/bin/bash"
NO_ENGINE = (
    "no Docker engine answers (scripts/docker-engine.sh start starts one; "
    "it needs root and Debian's docker.io)"
)
# Bounds for waiting on containers; the specs allow more (startupProbe: 300 s,
# activeDeadlineSeconds: 3600 s), a test should not.
READY_TIMEOUT = 180
RUN_TIMEOUT = 300


def announce(capsys, record_property, key: str, text: str, value) -> None:
    """Show a measurement in the test output and keep it in the JUnit report."""
    record_property(key, value)
    with capsys.disabled():
        print(f"\n[containers] {text}", flush=True)


# -- rendering, as `make deploy` does --------------------------------------------------


def render(out: Path, overlay: str, image_env: Path, version: str) -> list[dict]:
    """scripts/k8s.sh render for `overlay` and `image_env`; the rendered objects."""
    if shutil.which("kubectl") is None:
        pytest.skip(
            "kubectl not found on PATH: rendering needs `kubectl kustomize` "
            "(kubectl >= 1.27 has kustomize 5 built in)"
        )
    env = {
        **os.environ,
        "OVERLAY": overlay,
        "IMAGE_ENV": str(image_env),
        "BUILD_DIR": str(out),
        "NAMESPACE": "mlferry",
        "MODEL_URI": f"models:/diabetes/{version}",
    }
    done = subprocess.run(
        [BASH, str(ROOT / "scripts" / "k8s.sh"), "render"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, f"k8s.sh render {overlay}:\n{done.stderr}"
    text = (out / overlay / "manifests.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod(docs: list[dict], workload: str) -> dict:
    """The pod spec of a workload in a render."""
    return pod_templates(SimpleNamespace(docs=docs))[workload]["spec"]


def config_maps(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d.get("data", {})
        for d in docs
        if d["kind"] == "ConfigMap"
    }


@pytest.fixture(scope="session")
def sample_renders(tmp_path_factory) -> dict[str, list[dict]]:
    """The deployable renders for the sample image.env (mlferry:diabetes-v3)."""
    out = tmp_path_factory.mktemp("sample-render")
    (out / "image.env").write_text(IMAGE_ENV)
    return {
        overlay: render(out, overlay, out / "image.env", "4")
        for overlay in ("kind", "registry")
    }


# -- the mapping from a container spec to `docker run` (no engine needed) --------------


def test_kind_server_spec_maps_to_exactly_these_docker_run_options(sample_renders):
    spec = pod(sample_renders["kind"], SERVER)
    (server,) = spec["containers"]
    args = docker_run_args(
        spec, server, host_ports={"http": 18080, "grpc": 18081, "metrics": 18082}
    )
    assert args == [
        "--pull", "never",
        "--user", "10001:10001",
        "--group-add", "10001",
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--memory", str(2 * 2**30),
        "--memory-swap", str(2 * 2**30),
        "--cpus", "2",
        "--cpu-shares", "256",
        "--publish", "127.0.0.1:18080:8080/tcp",
        "--publish", "127.0.0.1:18081:8081/tcp",
        "--publish", "127.0.0.1:18082:8082/tcp",
        "--tmpfs", f"/tmp:rw,exec,nosuid,nodev,size={256 * 2**20},mode=0777",
        "--env", "MLFERRY_LOG_FORMAT=json",
        "--stop-timeout", "30",
        "mlferry:diabetes-v3",
    ]  # fmt: skip


def test_kind_batch_spec_maps_volumes_and_args(sample_renders):
    spec = pod(sample_renders["kind"], BATCH)
    (batch,) = spec["containers"]
    with pytest.raises(Unsupported, match=r"hostPath /mlferry-data/in on the node"):
        docker_run_args(spec, batch)
    args = docker_run_args(
        spec, batch, host_paths={"data-in": "/host/in", "data-out": "/host/out/"}
    )
    assert args[-4:] == [
        "mlferry:diabetes-v3",
        "score",
        "--job",
        "/opt/mlferry/jobs/diabetes-history.yaml",
    ]
    mounts = [args[i + 1] for i, a in enumerate(args) if a in ("--mount", "--tmpfs")]
    assert mounts == [
        f"/tmp:rw,exec,nosuid,nodev,size={512 * 2**20},mode=0777",
        "type=bind,source=/host/in,target=/data/in,readonly",
        "type=bind,source=/host/out,target=/data/out",
    ]
    assert "--publish" not in args
    assert args[args.index("--memory") + 1] == str(1536 * 2**20)
    # A Job pod's default grace period.
    assert args[args.index("--stop-timeout") + 1] == "30"


def test_registry_init_container_gets_its_uri_from_the_configmap(sample_renders):
    docs = sample_renders["registry"]
    spec = pod(docs, BATCH)
    (fetch,) = spec["initContainers"]
    secrets = {"mlferry-registry": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}}
    args = docker_run_args(spec, fetch, config_maps=config_maps(docs), secrets=secrets)
    envs = [args[i + 1] for i, a in enumerate(args) if a == "--env"]
    # Optional Secret keys that are absent stay unset, as in the pod.
    assert envs == [
        "MLFERRY_MODEL_URI=models:/diabetes/4",
        "MLFLOW_TRACKING_URI=http://127.0.0.1:5999",
        "MLFERRY_LOG_FORMAT=json",
    ]
    assert args[-5:] == [
        "fetch",
        "--model-uri",
        "models:/diabetes/4",
        "--dest",
        "/model/pinned",
    ]
    with pytest.raises(Unsupported, match=r"ConfigMap 'mlferry-model-\w+' has no key"):
        docker_run_args(spec, fetch, config_maps={}, secrets=secrets)


def test_command_replaces_the_entrypoint_and_references_expand():
    spec = {"terminationGracePeriodSeconds": 5}
    container = {
        "name": "c",
        "image": "img:1",
        "command": ["python", "-c"],
        "args": ["print('$(GREETING)', '$$(GREETING)', '$(UNSET)')"],
        "env": [
            {"name": "WHO", "value": "world"},
            {"name": "GREETING", "value": "hello $(WHO)"},
        ],
    }
    assert docker_run_args(spec, container) == [
        "--security-opt", "seccomp=unconfined",
        "--env", "WHO=world",
        "--env", "GREETING=hello world",
        "--stop-timeout", "5",
        "--entrypoint", "python",
        "img:1",
        "-c",
        "print('hello world', '$(GREETING)', '$(UNSET)')",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("container", "pod_spec", "message"),
    [
        ({"lifecycle": {}}, {}, r"fields \['lifecycle'\]"),
        ({"securityContext": {"runAsUser": 0, "runAsNonRoot": True}}, {}, "refuses"),
        ({"securityContext": {"runAsNonRoot": True}}, {}, "cannot be checked"),
        ({"securityContext": {"runAsGroup": 5}}, {}, "runAsGroup without runAsUser"),
        ({"securityContext": {"seLinuxOptions": {}}}, {}, "seLinuxOptions"),
        (
            {"volumeMounts": [{"name": "cfg", "mountPath": "/etc/x"}]},
            {"volumes": [{"name": "cfg", "configMap": {"name": "x"}}]},
            r"volume cfg: \['configMap'\]",
        ),
        (
            {"volumeMounts": [{"name": "gone", "mountPath": "/x"}]},
            {},
            "no such volume",
        ),
        (
            {"env": [{"name": "N", "valueFrom": {"fieldRef": {}}}]},
            {},
            r"valueFrom \['fieldRef'\]",
        ),
        ({"resources": {"limits": {"memory": "lots"}}}, {}, "memory quantity 'lots'"),
    ],
)
def test_what_docker_cannot_reproduce_is_refused(container, pod_spec, message):
    with pytest.raises(Unsupported, match=message):
        docker_run_args(pod_spec, {"name": "c", "image": "img:1", **container})


def test_quantities_and_references():
    assert memory_bytes("512Mi") == 512 * 2**20
    assert memory_bytes("1G") == 10**9
    assert memory_bytes(1048576) == 1048576
    assert millicpus("250m") == 250
    assert millicpus("1.5") == 1500
    assert millicpus(2) == 2000
    assert expand("$(A)-$$(A)-$(B)-$", {"A": "x"}) == "x-$(A)-$(B)-$"


# -- the engine and the image ----------------------------------------------------------


class Engine:
    """The docker client that builds this project's images (scripts/docker.sh)."""

    def __init__(self, client: str):
        self.client = client

    def __call__(self, *args: str, timeout: float = 60, check: bool = True):
        done = subprocess.run(
            [self.client, *args], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, f"docker {args[0]}: {done.stderr}"
        return done

    def inspect(self, ref: str) -> dict:
        return json.loads(self("inspect", ref).stdout)[0]

    def logs(self, container: str) -> str:
        done = self("logs", "--tail", "60", container, check=False)
        return (done.stdout + done.stderr)[-6000:]

    def wait(self, container: str, timeout: float) -> int:
        """The container's exit code, once it has exited (bounded)."""
        try:
            return int(self("wait", container, timeout=timeout).stdout.strip())
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"container did not finish within {timeout}s:\n{self.logs(container)}"
            )


class Containers:
    """Starts containers and removes every one of them by ID at the end."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.started: list[str] = []

    def run(self, *args: str) -> str:
        done = self.engine(
            "run", "--detach", "--label", "io.mlferry.test=containers", *args
        )
        container = done.stdout.strip().splitlines()[-1]
        self.started.append(container)
        return container

    def remove_all(self) -> None:
        for container in self.started:
            self.engine("rm", "--force", "--volumes", container, check=False)
        self.started.clear()


@pytest.fixture(scope="session")
def engine() -> Engine:
    which = subprocess.run(
        [BASH, str(ROOT / "scripts" / "docker.sh"), "--which"],
        capture_output=True,
        text=True,
    )
    client = which.stdout.strip()
    if which.returncode != 0 or not shutil.which(client):
        pytest.skip(
            f"no docker client found ({client or 'none on PATH'}; install Debian's "
            "docker.io)"
        )
    try:
        info = subprocess.run([client, "info"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip(NO_ENGINE)
    if info.returncode != 0:
        pytest.skip(NO_ENGINE)
    return Engine(client)


@pytest.fixture
def containers(engine):
    started = Containers(engine)
    yield started
    started.remove_all()


@dataclass
class BuiltImage:
    ref: str
    env_file: Path
    facts: dict[str, str]
    build_seconds: float
    size: int


@pytest.fixture(scope="session")
def image(engine, registry_server, demo_version, tmp_path_factory):
    """The image, built once from the session registry's demo model.

    build-image.sh downloads the model into build/model-test-<random>/ (it must lie
    in the build context) and writes image.env to a temporary folder, so build/model
    and build/image.env stay as they are. The image is removed at the end; its
    layers stay in the build cache, so the next build is quick.
    """
    (ROOT / "build").mkdir(exist_ok=True)
    model_dir = Path(tempfile.mkdtemp(prefix="model-test-", dir=ROOT / "build"))
    image_env = tmp_path_factory.mktemp("image") / "image.env"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry_server.url,
        "IMAGE": TEST_IMAGE,
        "MODEL_URI": "models:/diabetes@champion",
        "MODEL_DIR": str(model_dir),
        "IMAGE_ENV": str(image_env),
        "VENV": str(ROOT / ".venv"),
        "PROGRESS": "plain",
        # Never pull: a base already here is used, else the local Debian one is made.
        "PULL": "0",
    }
    ref = None
    started = time.monotonic()
    try:
        done = subprocess.run(
            [BASH, str(ROOT / "scripts" / "build-image.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=1500,
        )
        seconds = time.monotonic() - started
        assert done.returncode == 0, f"build-image.sh failed:\n{done.stderr[-6000:]}"
        facts = dict(line.split("=", 1) for line in image_env.read_text().splitlines())
        ref = facts["IMAGE_REF"]
        assert done.stdout.strip().splitlines()[-1] == ref
        yield BuiltImage(ref, image_env, facts, seconds, engine.inspect(ref)["Size"])
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
        if ref is not None:
            engine("rmi", ref, check=False)


@pytest.fixture(scope="session")
def renders(image, demo_version, tmp_path_factory) -> dict[str, list[dict]]:
    """What `make deploy` would apply for the test image (kind and registry)."""
    out = tmp_path_factory.mktemp("render")
    return {
        overlay: render(out, overlay, image.env_file, demo_version)
        for overlay in ("kind", "registry")
    }


@pytest.fixture(scope="session")
def expected(registry_server, session_home, history, demo_version) -> pd.Series:
    """The demo model's predictions for the history table, in this process."""
    settings = load_settings(home=session_home, registry_port=registry_server.port)
    model = load_model(settings, f"models:/diabetes/{demo_version}")
    return model.predict(pd.read_csv(history))["prediction"]


@pytest.mark.docker
def test_image_is_tagged_and_labelled_with_the_model(
    engine, image, demo_version, capsys, record_property
):
    assert image.ref == f"{TEST_IMAGE}:diabetes-v{demo_version}"
    assert image.facts["MODEL_VERSION"] == demo_version
    config = engine.inspect(image.ref)["Config"]
    labels = config["Labels"]
    assert labels["io.mlferry.model.name"] == "diabetes"
    assert labels["io.mlferry.model.version"] == demo_version
    assert labels["io.mlferry.model.alias"] == "champion"
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["mlferry"]
    assert config["Cmd"] == ["serve"]
    announce(
        capsys,
        record_property,
        "image",
        f"image {image.ref}: {image.size / 1e6:,.0f} MB, "
        f"built in {image.build_seconds:.1f} s",
        {
            "ref": image.ref,
            "size_bytes": image.size,
            "build_seconds": round(image.build_seconds, 1),
        },
    )


# -- the model server, as the kind Deployment runs it ----------------------------------


def host_port_for(container: dict, port, host_ports: dict[str, int]) -> int:
    """The host port published for a probe's port (a name or a number)."""
    for declared in container["ports"]:
        if port in (declared["name"], declared["containerPort"]):
            return host_ports[declared["name"]]
    raise AssertionError(f"port {port} is not declared by {container['name']}")


@dataclass
class RunningServer:
    id: str
    spec: dict
    container: dict
    ports: dict[str, int]
    ready_seconds: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"


@pytest.fixture(scope="module")
def server(engine, renders):
    """The server container of the kind Deployment, started once and ready."""
    spec = pod(renders["kind"], SERVER)
    (container,) = spec["containers"]
    host_ports = {p["name"]: free_port() for p in container["ports"]}
    started = Containers(engine)
    try:
        began = time.monotonic()
        cid = started.run(*docker_run_args(spec, container, host_ports=host_ports))
        probe = container["readinessProbe"]["httpGet"]
        ready_url = (
            f"http://127.0.0.1:{host_port_for(container, probe['port'], host_ports)}"
            f"{probe['path']}"
        )
        # The kubelet allows the startup probe's whole budget; a test, less.
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        timeout = min(budget, READY_TIMEOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            state = engine.inspect(cid)["State"]
            assert state["Running"], (
                f"server exited with {state['ExitCode']} before it was ready:\n"
                f"{engine.logs(cid)}"
            )
            assert time.monotonic() < deadline, (
                f"{ready_url} not ready within {timeout}s:\n{engine.logs(cid)}"
            )
            time.sleep(0.25)
        yield RunningServer(cid, spec, container, host_ports, time.monotonic() - began)
    finally:
        started.remove_all()


@pytest.mark.docker
def test_server_is_ready_and_reports_its_start_time(server, capsys, record_property):
    assert ModelClient(server.url, "diabetes").ready()
    announce(
        capsys,
        record_property,
        "server_ready_seconds",
        f"server container: started to ready in {server.ready_seconds:.1f} s",
        round(server.ready_seconds, 2),
    )


@pytest.mark.docker
def test_server_runs_as_the_spec_says(engine, server):
    host = engine.inspect(server.id)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 2 * 2**30
    assert engine.inspect(server.id)["Config"]["User"] == "10001:10001"
    # Nothing can be written outside the emptyDir, even by the server's own user.
    done = engine("exec", server.id, "touch", "/opt/mlferry/x", check=False)
    assert done.returncode != 0
    assert "Read-only file system" in done.stderr


@pytest.mark.docker
def test_server_predicts_as_the_model_does_in_process(
    server, history, expected, demo_version
):
    rows = pd.read_csv(history)
    client = ModelClient(server.url, "diabetes", timeout=30)
    answer = client.infer(rows[FEATURES])
    assert answer.model_name == "diabetes"
    assert answer.model_version == demo_version
    np.testing.assert_array_equal(answer.frame["prediction"], expected)
    through_invocations = client.invocations(rows[FEATURES].head(20), "split")
    np.testing.assert_array_equal(through_invocations["prediction"], expected.head(20))


@pytest.mark.docker
def test_server_answers_a_missing_column_with_a_400_naming_it(server, history):
    rows = pd.read_csv(history).head(3)[FEATURES].drop(columns="bmi")
    client = ModelClient(server.url, "diabetes")
    with pytest.raises(ServiceError, match=r"HTTP 400: .*'bmi'") as raised:
        client.invocations(rows, "split")
    assert raised.value.status == 400
    assert client.ready()


@pytest.mark.docker
def test_server_metrics_and_liveness_answer(server):
    metrics = requests.get(
        f"http://127.0.0.1:{server.ports['metrics']}/metrics", timeout=10
    )
    assert metrics.status_code == 200
    assert "model_infer_request_success" in metrics.text
    live = server.container["livenessProbe"]["httpGet"]
    port = host_port_for(server.container, live["port"], server.ports)
    assert requests.get(f"http://127.0.0.1:{port}{live['path']}", timeout=5).ok


@pytest.mark.docker
def test_server_stops_cleanly_within_the_grace_period(
    engine, server, capsys, record_property
):
    grace = server.spec["terminationGracePeriodSeconds"]
    assert engine.inspect(server.id)["Config"]["StopTimeout"] == grace
    began = time.monotonic()
    engine("stop", server.id, timeout=grace + 30)
    seconds = time.monotonic() - began
    state = engine.inspect(server.id)["State"]
    assert state["ExitCode"] == 0, engine.logs(server.id)
    assert not state["OOMKilled"]
    assert seconds < grace
    announce(
        capsys,
        record_property,
        "server_stop_seconds",
        f"server container: SIGTERM to exit 0 in {seconds:.1f} s (grace {grace} s)",
        round(seconds, 2),
    )


# -- the batch job, as the kind CronJob runs it ----------------------------------------


def batch_folders(tmp_path: Path, history: Path | None = None):
    """Host folders for the batch pod: input (read by 10001), output (written by it)."""
    data_in, data_out = tmp_path / "in", tmp_path / "out"
    data_in.mkdir()
    data_out.mkdir()
    if history is not None:
        shutil.copy(history, data_in / history.name)
    data_in.chmod(0o755)
    for path in data_in.iterdir():
        path.chmod(0o644)
    # The pod's fsGroup would make the volume writable for the pod; Docker cannot.
    data_out.chmod(0o777)
    return data_in, data_out


def run_to_completion(engine, containers, *args: str) -> tuple[int, str, float]:
    began = time.monotonic()
    cid = containers.run(*args)
    code = engine.wait(cid, RUN_TIMEOUT)
    return code, engine.logs(cid), time.monotonic() - began


def assert_partition(data_out: Path, version: str, expected: pd.Series) -> dict:
    job = data_out / "diabetes-history"
    (run,) = job.glob("run=*")
    assert sorted(p.name for p in run.iterdir()) == [
        "_SUCCESS",
        "manifest.json",
        "predictions.parquet",
    ]
    assert not list(job.glob(".run=*.tmp-*"))
    assert not list(job.glob(".run=*.old-*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["name"] == "diabetes"
    assert manifest["model"]["version"] == version
    assert manifest["rows_in"] == manifest["rows_out"] == 442
    predictions = pd.read_parquet(run / "predictions.parquet")
    assert len(predictions) == 442
    np.testing.assert_array_equal(predictions["prediction"], expected)
    return manifest


@pytest.mark.docker
def test_batch_job_writes_its_partition(
    engine,
    containers,
    renders,
    history,
    expected,
    demo_version,
    tmp_path,
    capsys,
    record_property,
):
    spec = pod(renders["kind"], BATCH)
    (container,) = spec["containers"]
    data_in, data_out = batch_folders(tmp_path, history)
    args = docker_run_args(
        spec, container, host_paths={"data-in": data_in, "data-out": data_out}
    )
    # The default-deny NetworkPolicy: the batch pod reaches nothing, nor does this.
    code, logs, seconds = run_to_completion(
        engine, containers, "--network", "none", *args
    )
    assert code == 0, logs
    manifest = assert_partition(data_out, demo_version, expected)
    assert manifest["model"]["alias"] == "champion"
    announce(
        capsys,
        record_property,
        "batch_seconds",
        f"batch container: 442 rows, start to exit 0 in {seconds:.1f} s",
        round(seconds, 2),
    )


@pytest.mark.docker
def test_batch_job_on_bad_input_fails_and_leaves_nothing(
    engine, containers, renders, history, tmp_path
):
    spec = pod(renders["kind"], BATCH)
    (container,) = spec["containers"]
    data_in, data_out = batch_folders(tmp_path)
    pd.read_csv(history).drop(columns="bmi").to_csv(data_in / history.name, index=False)
    (data_in / history.name).chmod(0o644)
    args = docker_run_args(
        spec, container, host_paths={"data-in": data_in, "data-out": data_out}
    )
    code, logs, _ = run_to_completion(engine, containers, "--network", "none", *args)
    # 4: input the model cannot take; the CronJob's podFailurePolicy fails at once.
    assert code == 4, logs
    assert "bmi" in logs
    job = data_out / "diabetes-history"
    assert not list(job.glob("run=*"))
    assert not list(job.glob(".run=*.tmp-*"))


# -- the registry overlay: fetch at pod start, then score with that model --------------


@pytest.mark.docker
def test_registry_overlay_fetches_the_pinned_model_then_scores_with_it(
    engine,
    containers,
    renders,
    registry_server,
    history,
    expected,
    demo_version,
    tmp_path,
    capsys,
    record_property,
):
    docs = renders["registry"]
    spec = pod(docs, BATCH)
    (fetch,) = spec["initContainers"]
    (batch,) = spec["containers"]
    data_in, data_out = batch_folders(tmp_path, history)
    # One host folder per shared emptyDir, as init and main containers share them.
    shared = {}
    for name in ("tmp", "model"):
        shared[name] = tmp_path / name
        shared[name].mkdir()
        shared[name].chmod(0o777)
    # The overlay keeps the base's emptyDir batch volumes; real storage goes there.
    host_paths = {**shared, "data-in": data_in, "data-out": data_out}
    # The embedded registry needs no credentials: the Secret holds only the address.
    secrets = {"mlferry-registry": {"MLFLOW_TRACKING_URI": registry_server.url}}

    init_args = docker_run_args(
        spec,
        fetch,
        config_maps=config_maps(docs),
        secrets=secrets,
        host_paths=host_paths,
    )
    # The registry listens on the host's loopback; inside a container 127.0.0.1 is
    # the container itself, so this one container shares the host's network.
    code, logs, fetch_seconds = run_to_completion(
        engine, containers, "--network", "host", *init_args
    )
    assert code == 0, logs
    pin = json.loads((shared["model"] / "pinned" / "mlferry-pin.json").read_text())
    assert (pin["name"], pin["version"]) == ("diabetes", demo_version)
    assert (shared["model"] / "pinned" / "MLmodel").is_file()

    args = docker_run_args(spec, batch, host_paths=host_paths)
    code, logs, seconds = run_to_completion(
        engine, containers, "--network", "none", *args
    )
    assert code == 0, logs
    manifest = assert_partition(data_out, demo_version, expected)
    assert manifest["model"]["pinned_uri"] == f"models:/diabetes/{demo_version}"
    announce(
        capsys,
        record_property,
        "registry_pod_seconds",
        f"registry overlay: fetch {fetch_seconds:.1f} s, then batch {seconds:.1f} s",
        {"fetch": round(fetch_seconds, 2), "batch": round(seconds, 2)},
    )
