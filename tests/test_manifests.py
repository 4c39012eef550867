"""The Kubernetes manifests: rendered, validated, policy-checked and cross-checked.

Every overlay is rendered once per session with `kubectl kustomize`, and so is what
`make deploy` would apply (scripts/k8s.sh render, from a sample build/image.env). The
renders are validated against the Kubernetes 1.36 schemas (`kubernetes-validate
--strict`), checked with checkov (from .venv-tools/), and cross-checked: selectors,
ports, images, hardening, resources, the CronJob's failure settings, the kind cluster.
The kind path itself runs only where kind and a Docker engine with registry access are.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
# kubernetes-validate bundles schemas up to 1.37; 1.36 matches the kind node (v1.36.1).
K8S_SCHEMA_VERSION = "1.36.0"
# As scripts/build-image.sh writes it (printf %q values).
IMAGE_ENV = """\
IMAGE_REF=mlferry:diabetes-v3
IMAGE_NAME=mlferry
IMAGE_TAG=diabetes-v3
MODEL_NAME=diabetes
MODEL_VERSION=3
MODEL_ALIAS=champion
MODEL_RUN_ID=0123456789abcdef
GIT_COMMIT=''
"""
SOURCES = {
    "base": K8S / "base",
    "kind": K8S / "overlays" / "kind",
    "registry": K8S / "overlays" / "registry",
}
# What `make deploy` applies; the registry one pinned to version 4 of the model.
DEPLOYS = {"kind-deploy": ("kind", "3"), "registry-deploy": ("registry", "4")}
RENDERS = [*SOURCES, *DEPLOYS]
SERVER, BATCH = "Deployment/mlferry-server", "CronJob/mlferry-batch"
BASH = shutil.which("bash") or "/bin/bash"


# -- rendering (once per session) ------------------------------------------------------


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip(
            "kubectl not found on PATH: rendering needs `kubectl kustomize` "
            "(kubectl >= 1.27 has kustomize 5 built in)"
        )
    return kubectl


def _load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, SimpleNamespace]:
    """Every render: name -> (path of the YAML stream, its objects)."""
    kubectl = _kubectl()
    out = tmp_path_factory.mktemp("k8s")
    renders = {}
    for name, source in SOURCES.items():
        done = subprocess.run(
            [kubectl, "kustomize", str(source)], capture_output=True, text=True
        )
        assert done.returncode == 0, f"kubectl kustomize {source}:\n{done.stderr}"
        path = out / f"{name}.yaml"
        path.write_text(done.stdout)
        renders[name] = SimpleNamespace(path=path, docs=_load(path))

    image_env = out / "image.env"
    image_env.write_text(IMAGE_ENV)
    for name, (overlay, version) in DEPLOYS.items():
        env = {
            **os.environ,
            "OVERLAY": overlay,
            "IMAGE_ENV": str(image_env),
            "BUILD_DIR": str(out / "build"),
            "NAMESPACE": "mlferry",
            "MODEL_URI": f"models:/diabetes/{version}",
        }
        done = subprocess.run(
            [BASH, str(ROOT / "scripts" / "k8s.sh"), "render"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, f"k8s.sh render {overlay}:\n{done.stderr}"
        path = out / "build" / overlay / "manifests.yaml"
        renders[name] = SimpleNamespace(path=path, docs=_load(path))
    return renders


def objects(render) -> dict[str, dict]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in render.docs}


def pod_templates(render) -> dict[str, dict]:
    """Workload -> its pod template (metadata + spec)."""
    found = {}
    for key, doc in objects(render).items():
        if doc["kind"] == "CronJob":
            found[key] = doc["spec"]["jobTemplate"]["spec"]["template"]
        elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            found[key] = doc["spec"]["template"]
    return found


def all_containers(render) -> list[tuple[str, dict]]:
    """(workload/container, container) for every container and init container."""
    found = []
    for key, template in pod_templates(render).items():
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            found.append((f"{key}/{container['name']}", container))
    return found


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_ports(template: dict) -> dict[str, int]:
    """Port name -> number over the pod's containers (numbers map to themselves)."""
    ports = {}
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            ports[port["name"]] = port["containerPort"]
            ports[port["containerPort"]] = port["containerPort"]
    return ports


# -- render, schema, policy ------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_render_holds_the_mlferry_objects(rendered, name):
    keys = set(objects(rendered[name]))
    expected = {
        SERVER,
        BATCH,
        "Service/mlferry-server",
        "ServiceAccount/mlferry",
        "PodDisruptionBudget/mlferry-server",
        "NetworkPolicy/mlferry-default-deny",
        "NetworkPolicy/mlferry-server-ingress",
    }
    assert expected <= keys, f"missing: {expected - keys}"


@pytest.mark.parametrize("name", RENDERS)
def test_render_validates_strictly_against_kubernetes_schemas(rendered, name):
    validator = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run(
        [str(validator), "--strict", "--quiet", "-k", K8S_SCHEMA_VERSION]
        + [str(rendered[name].path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _checkov(rendered, *options: str) -> dict:
    if not CHECKOV.exists():
        pytest.skip(
            f"{CHECKOV.relative_to(ROOT)} not found: create it with "
            "scripts/tools-venv.sh (checkov's pins clash with mlflow's)"
        )
    files = []
    for name in DEPLOYS:
        files += ["-f", str(rendered[name].path)]
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    done = subprocess.run(
        [str(CHECKOV), *options, "--output", "json", *files],
        capture_output=True,
        text=True,
        env=env,
        cwd=rendered["kind-deploy"].path.parents[1],
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


def _failures(report: dict) -> list[str]:
    return sorted(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in report["results"]["failed_checks"]
    )


def _skip_list() -> list[str]:
    return yaml.safe_load((K8S / ".checkov.yaml").read_text())["skip-check"]


@pytest.fixture(scope="session")
def checkov_raw(rendered) -> dict:
    """checkov on what `make deploy` applies, with no check skipped."""
    return _checkov(rendered, "--framework", "kubernetes", "--skip-download")


def test_checkov_passes_with_the_documented_skip_list(rendered):
    report = _checkov(rendered, "--config-file", str(K8S / ".checkov.yaml"))
    assert report["summary"]["resource_count"] > 0
    assert report["summary"]["parsing_errors"] == 0
    assert _failures(report) == []


def test_checkov_failures_are_all_in_the_skip_list(checkov_raw):
    skipped = set(_skip_list())
    unexpected = [f for f in _failures(checkov_raw) if f.split()[0] not in skipped]
    assert unexpected == []


def test_checkov_skip_list_has_no_stale_entries(checkov_raw):
    failing = {c["check_id"] for c in checkov_raw["results"]["failed_checks"]}
    assert sorted(set(_skip_list()) - failing) == []


def test_checkov_skips_are_explained_in_the_readme():
    readme = (K8S / "README.md").read_text()
    for check in _skip_list():
        assert re.search(rf"^\| `{check}` .+\| .{{40,}} \|$", readme, re.M), check


# -- consistency -----------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_service_selects_the_server_pods_only(rendered, name):
    objs, templates = objects(rendered[name]), pod_templates(rendered[name])
    selector = objs["Service/mlferry-server"]["spec"]["selector"]
    assert matches(selector, templates[SERVER]["metadata"]["labels"])
    assert not matches(selector, templates[BATCH]["metadata"]["labels"])


@pytest.mark.parametrize("name", RENDERS)
def test_deployment_and_budget_select_the_server_pods(rendered, name):
    objs, templates = objects(rendered[name]), pod_templates(rendered[name])
    labels = templates[SERVER]["metadata"]["labels"]
    assert matches(objs[SERVER]["spec"]["selector"]["matchLabels"], labels)
    budget = objs["PodDisruptionBudget/mlferry-server"]["spec"]
    assert matches(budget["selector"]["matchLabels"], labels)
    assert budget.get("maxUnavailable") == 1  # a one-replica overlay stays drainable


@pytest.mark.parametrize("name", RENDERS)
def test_service_target_ports_are_server_container_ports(rendered, name):
    template = pod_templates(rendered[name])[SERVER]
    ports = container_ports(template)
    service = objects(rendered[name])["Service/mlferry-server"]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, port
        assert ports[port["targetPort"]] == port["port"], port


@pytest.mark.parametrize("name", RENDERS)
def test_probes_use_server_ports_and_wait_for_the_model(rendered, name):
    template = pod_templates(rendered[name])[SERVER]
    ports = container_ports(template)
    (server,) = template["spec"]["containers"]
    assert {p["containerPort"] for p in server["ports"]} == {8080, 8081, 8082}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["port"] in ports, probe
    # Ready means the model is loaded; the server-level check can be true with none.
    model_ready = re.compile(r"^/v2/models/diabetes/ready$")
    assert model_ready.match(server["readinessProbe"]["httpGet"]["path"])
    assert model_ready.match(server["startupProbe"]["httpGet"]["path"])
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    strategy = objects(rendered[name])[SERVER]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", RENDERS)
def test_network_policies_cover_every_pod_and_open_only_server_ports(rendered, name):
    objs, templates = objects(rendered[name]), pod_templates(rendered[name])
    deny = objs["NetworkPolicy/mlferry-default-deny"]["spec"]
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    for template in templates.values():
        assert matches(
            deny["podSelector"]["matchLabels"], template["metadata"]["labels"]
        )

    ingress = objs["NetworkPolicy/mlferry-server-ingress"]["spec"]
    assert matches(
        ingress["podSelector"]["matchLabels"], templates[SERVER]["metadata"]["labels"]
    )
    ports = container_ports(templates[SERVER])
    opened = {ports[p["port"]] for rule in ingress["ingress"] for p in rule["ports"]}
    assert opened == {8080, 8081, 8082}


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_runs_the_mlferry_image(rendered, name):
    expected = "mlferry:diabetes-v3" if name in DEPLOYS else "mlferry"
    for where, container in all_containers(rendered[name]):
        assert container["image"] == expected, where


def test_overlay_image_name_matches_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    image = re.search(r"^IMAGE \?= *(\S+)", makefile, re.M)
    assert image, "Makefile has no `IMAGE ?=` knob"
    for overlay in ("kind", "registry"):
        kustomization = yaml.safe_load(
            (SOURCES[overlay] / "kustomization.yaml").read_text()
        )
        (entry,) = [i for i in kustomization["images"] if i["name"] == "mlferry"]
        assert entry["newName"] == image.group(1), overlay


def test_batch_job_spec_exists_in_jobs(rendered):
    template = pod_templates(rendered["base"])[BATCH]
    (batch,) = template["spec"]["containers"]
    assert batch["args"][:2] == ["score", "--job"]
    spec = Path(batch["args"][2])
    assert spec.parent == Path("/opt/mlferry/jobs"), "the image keeps jobs/ there"
    assert (ROOT / "jobs" / spec.name).is_file(), f"jobs/{spec.name} is missing"


@pytest.mark.parametrize("name", RENDERS)
def test_every_pod_and_container_is_hardened(rendered, name):
    for key, template in pod_templates(rendered[name]).items():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, key
        assert pod["serviceAccountName"] == "mlferry", key
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, key
        assert security["seccompProfile"]["type"] == "RuntimeDefault", key
        mounts_tmp = all(
            any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", []))
            for c in pod.get("initContainers", []) + pod["containers"]
        )
        assert mounts_tmp, f"{key}: every container needs /tmp writable"
        tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert tmp, key
        assert "emptyDir" in tmp[0], key
    for where, container in all_containers(rendered[name]):
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["runAsUser"] == 10001, where
        assert security["runAsGroup"] == 10001, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in security["capabilities"], where
        assert security["seccompProfile"]["type"] == "RuntimeDefault", where


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_has_requests_and_limits(rendered, name):
    for where, container in all_containers(rendered[name]):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) >= {"cpu", "memory"}, f"{where} {kind}"


def test_service_account_mounts_no_token(rendered):
    account = objects(rendered["base"])["ServiceAccount/mlferry"]
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", RENDERS)
def test_cronjob_says_how_it_fails(rendered, name):
    cronjob = objects(rendered[name])[BATCH]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["startingDeadlineSeconds"] > 0
    assert cronjob["successfulJobsHistoryLimit"] >= 1
    assert cronjob["failedJobsHistoryLimit"] >= 1
    job = cronjob["jobTemplate"]["spec"]
    assert 0 < job["backoffLimit"] <= 3
    assert job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    fail_fast = job["podFailurePolicy"]["rules"][0]
    assert fail_fast["action"] == "FailJob"
    assert fail_fast["onExitCodes"] == {"operator": "In", "values": [2, 4]}


def test_base_cronjob_explains_each_failure_setting():
    text = (K8S / "base" / "cronjob.yaml").read_text().splitlines()
    for setting in (
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
        "backoffLimit",
        "activeDeadlineSeconds",
        "restartPolicy",
    ):
        (index,) = [
            i for i, line in enumerate(text) if line.strip().startswith(setting)
        ]
        assert text[index - 1].strip().startswith("#"), f"{setting} has no reason"


@pytest.mark.parametrize("name", RENDERS)
def test_objects_carry_the_standard_labels(rendered, name):
    for key, doc in objects(rendered[name]).items():
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "mlferry", key
        assert labels.get("app.kubernetes.io/part-of") == "mlferry", key
    for key, template in pod_templates(rendered[name]).items():
        component = "server" if key == SERVER else "batch"
        assert (
            template["metadata"]["labels"]["app.kubernetes.io/component"] == component
        )


@pytest.mark.parametrize("name", list(DEPLOYS))
def test_deploy_render_pins_namespace_version_and_annotations(rendered, name):
    version = DEPLOYS[name][1]
    for key, doc in objects(rendered[name]).items():
        assert doc["metadata"]["namespace"] == "mlferry", key
        assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == (
            f"diabetes-v{version}"
        )
    for key, template in pod_templates(rendered[name]).items():
        annotations = template["metadata"]["annotations"]
        assert annotations["io.mlferry/model-name"] == "diabetes", key
        assert annotations["io.mlferry/model-version"] == version, key
        assert annotations["io.mlferry/model-uri"] == f"models:/diabetes/{version}", key
        # The alias is the image's; the registry overlay pins its own version.
        alias = annotations.get("io.mlferry/model-alias")
        assert alias == ("champion" if name == "kind-deploy" else None), key


def test_base_pods_declare_an_unpinned_model_version(rendered):
    for key, template in pod_templates(rendered["base"]).items():
        assert template["metadata"]["annotations"]["io.mlferry/model-version"] == (
            "unpinned"
        ), key


# -- kind overlay and cluster ----------------------------------------------------------


def _cluster() -> dict:
    return yaml.safe_load((K8S / "kind" / "cluster.yaml").read_text())


def test_kind_node_image_is_pinned_by_digest_and_matches_the_makefile():
    (node,) = _cluster()["nodes"]
    assert re.fullmatch(r"kindest/node:v1\.36\.\d+@sha256:[0-9a-f]{64}", node["image"])
    makefile = (ROOT / "Makefile").read_text()
    knob = re.search(r"^KIND_NODE_IMAGE \?= *(\S+)", makefile, re.M)
    assert knob, "Makefile has no `KIND_NODE_IMAGE ?=` knob"
    assert knob.group(1) == node["image"]


def test_kind_node_ports_are_mapped_to_host_loopback(rendered):
    service = objects(rendered["kind"])["Service/mlferry-server"]["spec"]
    assert service["type"] == "NodePort"
    node_ports = {p["nodePort"] for p in service["ports"]}
    (node,) = _cluster()["nodes"]
    mapped = {m["containerPort"]: m for m in node["extraPortMappings"]}
    assert node_ports == set(mapped)
    assert {m["listenAddress"] for m in mapped.values()} == {"127.0.0.1"}


def test_kind_batch_volumes_are_host_folders_under_the_node_mount(rendered):
    (node,) = _cluster()["nodes"]
    (mount,) = node["extraMounts"]
    makefile = (ROOT / "Makefile").read_text()
    knob = re.search(r"^KIND_DATA \?= *(\S+)", makefile, re.M)
    assert knob, "Makefile has no `KIND_DATA ?=` knob"
    assert knob.group(1) == mount["hostPath"]

    template = pod_templates(rendered["kind"])[BATCH]["spec"]
    volumes = {v["name"]: v for v in template["volumes"]}
    for name, sub in (("data-in", "in"), ("data-out", "out")):
        assert set(volumes[name]) == {"name", "hostPath"}, name
        assert volumes[name]["hostPath"]["path"] == f"{mount['containerPath']}/{sub}"
    mounts = {m["name"]: m for m in template["containers"][0]["volumeMounts"]}
    assert mounts["data-in"]["mountPath"] == "/data/in"
    assert mounts["data-in"]["readOnly"] is True
    assert mounts["data-out"]["mountPath"] == "/data/out"


def test_kind_pods_never_pull_and_run_one_server(rendered):
    for where, container in all_containers(rendered["kind"]):
        assert container["imagePullPolicy"] == "Never", where
    assert objects(rendered["kind"])[SERVER]["spec"]["replicas"] == 1


# -- registry overlay ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["registry", "registry-deploy"])
def test_registry_pods_fetch_the_model_before_they_start(rendered, name):
    objs = objects(rendered[name])
    (configmap,) = [k for k in objs if k.startswith("ConfigMap/mlferry-model-")]
    for key, template in pod_templates(rendered[name]).items():
        spec = template["spec"]
        (fetch,) = spec["initContainers"]
        assert fetch["args"] == [
            "fetch",
            "--model-uri",
            "$(MLFERRY_MODEL_URI)",
            "--dest",
            "/model/pinned",
        ], key
        env = {e["name"]: e for e in fetch["env"]}
        uri_ref = env["MLFERRY_MODEL_URI"]["valueFrom"]["configMapKeyRef"]
        assert f"ConfigMap/{uri_ref['name']}" == configmap, key
        for var in ("URI", "USERNAME", "PASSWORD"):
            ref = env[f"MLFLOW_TRACKING_{var}"]["valueFrom"]["secretKeyRef"]
            assert ref == {
                "name": "mlferry-registry",
                "key": f"MLFLOW_TRACKING_{var}",
                "optional": True,
            }, key
        # fetch stages beside its destination: that must be inside the writable volume.
        fetch_mounts = {m["mountPath"]: m for m in fetch["volumeMounts"]}
        assert fetch_mounts["/model"]["name"] == "model", key
        assert not fetch_mounts["/model"].get("readOnly"), key

        (main,) = spec["containers"]
        main_env = {e["name"]: e for e in main.get("env", [])}
        assert main_env["MLFERRY_MODEL_DIR"]["value"] == "/model/pinned", key
        assert not any(n.startswith("MLFLOW_TRACKING") for n in main_env), key
        model_mount = [m for m in main["volumeMounts"] if m["mountPath"] == "/model"]
        assert model_mount, key
        assert model_mount[0]["readOnly"] is True, key
        model = [v for v in spec["volumes"] if v["name"] == "model"]
        assert model, key
        assert "emptyDir" in model[0], key


def test_registry_deploy_pins_the_model_uri(rendered):
    objs = objects(rendered["registry-deploy"])
    (configmap,) = [
        d for k, d in objs.items() if k.startswith("ConfigMap/mlferry-model-")
    ]
    assert configmap["data"] == {"MLFERRY_MODEL_URI": "models:/diabetes/4"}


def test_registry_egress_allows_dns_and_web_ports_only(rendered):
    objs = objects(rendered["registry"])
    egress = objs["NetworkPolicy/mlferry-registry-egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    assert egress["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlferry"}
    ports = {
        (p["port"], p["protocol"]) for rule in egress["egress"] for p in rule["ports"]
    }
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (80, "TCP")}
    assert "NetworkPolicy/mlferry-registry-egress" not in objects(rendered["kind"])


def test_registry_secret_example_holds_no_real_secret():
    example = (K8S / "overlays" / "registry" / "secret.example.env").read_text()
    values = dict(
        line.split("=", 1)
        for line in example.splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    }
    assert values["MLFLOW_TRACKING_PASSWORD"] == "TOKEN"


# -- scripts ---------------------------------------------------------------------------


def _run_script(*args: str, path: str | None = None, **env: str):
    environ = {**os.environ, **env}
    if path is not None:
        environ["PATH"] = path
    return subprocess.run(
        [BASH, str(ROOT / "scripts" / "k8s.sh"), *args],
        capture_output=True,
        text=True,
        env=environ,
    )


def test_k8s_script_rejects_an_unknown_command():
    done = _run_script("launch")
    assert done.returncode == 2
    assert "unknown command 'launch'" in done.stderr
    assert "Usage: scripts/k8s.sh COMMAND" in done.stdout


def test_k8s_script_names_the_missing_tools(tmp_path):
    # A PATH holding only what the script itself needs: no kind, no docker.
    for tool in ("sed", "dirname"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    done = _run_script("cluster", path=str(tmp_path))
    assert done.returncode == 1
    assert "missing tools: kind docker" in done.stderr
    assert "kind: https://kind.sigs.k8s.io" in done.stderr


def test_k8s_render_says_to_build_the_image_first(tmp_path):
    _kubectl()
    done = _run_script("render", IMAGE_ENV=str(tmp_path / "image.env"))
    assert done.returncode == 1
    assert "build the image with 'make image'" in done.stderr


def test_k8s_render_rejects_an_image_env_without_a_version(tmp_path):
    _kubectl()
    (tmp_path / "image.env").write_text("IMAGE_REF=mlferry:diabetes-v3\nMODEL_NAME=x\n")
    done = _run_script(
        "render", IMAGE_ENV=str(tmp_path / "image.env"), BUILD_DIR=str(tmp_path)
    )
    assert done.returncode == 1
    assert "has no MODEL_VERSION" in done.stderr
    assert not (tmp_path / "kind" / "manifests.yaml").exists()


def test_tools_lock_pins_the_checkov_of_tools_in():
    wanted = re.search(
        r"^checkov==(\S+)", (ROOT / "requirements/tools.in").read_text(), re.M
    )
    locked = re.search(
        r"^checkov==(\S+)", (ROOT / "requirements/tools.lock").read_text(), re.M
    )
    assert wanted, "tools.in pins no checkov"
    assert locked, "tools.lock pins no checkov"
    assert wanted.group(1) == locked.group(1)


# -- scripts/smoke.py (the parts that need no cluster) ---------------------------------


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location(
        "smoke", ROOT / "scripts" / "smoke.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_help_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "smoke.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert "--image-env" in done.stdout


def test_smoke_request_has_one_fp64_input_per_column(smoke):
    body = smoke.v2_request(smoke.BUILTIN_ROWS)
    assert [i["name"] for i in body["inputs"]] == smoke.FEATURES
    assert {i["datatype"] for i in body["inputs"]} == {"FP64"}
    assert {tuple(i["shape"]) for i in body["inputs"]} == {(2,)}


def test_smoke_reads_demo_rows_from_the_host_input(smoke, tmp_path):
    (tmp_path / "in").mkdir()
    header = "patient_id," + ",".join(smoke.FEATURES)
    lines = [header] + [f"p{i}," + ",".join(["1.5"] * 10) for i in range(8)]
    (tmp_path / "in" / smoke.DEMO_INPUT).write_text("\n".join(lines) + "\n")
    rows = smoke.demo_rows(tmp_path)
    assert len(rows) == 5
    assert rows[0] == dict.fromkeys(smoke.FEATURES, 1.5)
    assert smoke.demo_rows(tmp_path / "nowhere") == smoke.BUILTIN_ROWS


def test_smoke_rejects_a_response_from_another_version(smoke):
    body = {
        "model_name": "diabetes",
        "model_version": "2",
        "outputs": [{"data": [1.0]}],
    }
    with pytest.raises(smoke.SmokeFailure, match="version '2'.*pins version '3'"):
        smoke.check_v2_response(body, 1, "diabetes", "3")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1.0], "expected 2 predictions"),
        ([1.0, "x"], "not a number"),
        ([1.0, None], "not a number"),
    ],
)
def test_smoke_rejects_bad_predictions(smoke, data, reason):
    body = {"model_name": "diabetes", "model_version": "3", "outputs": [{"data": data}]}
    with pytest.raises(smoke.SmokeFailure, match=reason):
        smoke.check_v2_response(body, 2, "diabetes", "3")


def test_smoke_rejects_non_finite_predictions(smoke):
    body = {
        "model_name": "diabetes",
        "model_version": "3",
        "outputs": [{"data": [1.0, float("nan")]}],
    }
    with pytest.raises(smoke.SmokeFailure, match="prediction 1 is not finite"):
        smoke.check_v2_response(body, 2, "diabetes", "3")


def test_smoke_expected_version_prefers_the_image_env(smoke, tmp_path):
    (tmp_path / "image.env").write_text(IMAGE_ENV)
    pinned = {"io.mlferry/model-version": "9"}
    assert smoke.expected_version(None, tmp_path / "image.env", pinned) == "3"
    assert smoke.expected_version("7", tmp_path / "image.env", pinned) == "7"
    assert smoke.expected_version(None, None, pinned) == "9"
    with pytest.raises(smoke.SmokeFailure, match="no pinned io.mlferry/model-version"):
        smoke.expected_version(None, None, {"io.mlferry/model-version": "unpinned"})


def _write_run(folder: Path, version: str, success: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "predictions.parquet").write_bytes(b"PAR1")
    (folder / "manifest.json").write_text(json.dumps({"model": {"version": version}}))
    if success:
        (folder / "_SUCCESS").write_text("")


def test_smoke_accepts_a_complete_output_folder(smoke, tmp_path):
    _write_run(tmp_path / "diabetes-history" / "run=smoke-1", "3")
    found = smoke.check_output_folder(tmp_path, "smoke-1", "3")
    assert found.name == "run=smoke-1"


def test_smoke_rejects_output_without_success_marker(smoke, tmp_path):
    _write_run(tmp_path / "diabetes-history" / "run=smoke-1", "3", success=False)
    with pytest.raises(smoke.SmokeFailure, match="no _SUCCESS marker"):
        smoke.check_output_folder(tmp_path, "smoke-1", "3")


def test_smoke_rejects_output_from_another_version(smoke, tmp_path):
    _write_run(tmp_path / "diabetes-history" / "run=smoke-1", "2")
    with pytest.raises(smoke.SmokeFailure, match="records model version '2'"):
        smoke.check_output_folder(tmp_path, "smoke-1", "3")


def test_smoke_rejects_a_missing_output_folder(smoke, tmp_path):
    with pytest.raises(smoke.SmokeFailure, match="found 0"):
        smoke.check_output_folder(tmp_path, "smoke-1", "3")


FAKE_KUBECTL = """\
#!{python}
# Stands in for `kubectl port-forward`: serves a V2 model on the requested local port.
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port = int(sys.argv[-1].split(":")[0])
assert sys.argv[-2] == "service/mlferry-server" and sys.argv[-1].endswith(":http")

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/models/diabetes/ready" else 404)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        columns = [i["data"] for i in body["inputs"]]
        answer = {{
            "model_name": "diabetes",
            "model_version": "{version}",
            "outputs": [{{"name": "p", "datatype": "FP64",
                         "shape": [len(columns[0]), 1],
                         "data": [sum(row) for row in zip(*columns)]}}],
        }}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fake_kubectl(tmp_path, monkeypatch):
    def install(version: str) -> None:
        kubectl = tmp_path / "kubectl"
        kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable, version=version))
        kubectl.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    return install


def _smoke_args(smoke, **overrides):
    args = smoke.parse_args(["--ready-timeout", "15", "--attempts", "1"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_smoke_server_check_port_forwards_and_scores(smoke, fake_kubectl, capsys):
    fake_kubectl("3")
    smoke.check_server(_smoke_args(smoke), "diabetes", "3", smoke.BUILTIN_ROWS)
    assert "ok: 2 rows scored by diabetes version 3" in capsys.readouterr().out


def test_smoke_server_check_fails_on_a_version_mismatch(smoke, fake_kubectl):
    fake_kubectl("2")
    with pytest.raises(smoke.SmokeFailure, match="pins version '3'"):
        smoke.check_server(_smoke_args(smoke), "diabetes", "3", smoke.BUILTIN_ROWS)


def test_smoke_server_check_reports_a_dead_port_forward(smoke, tmp_path, monkeypatch):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text("#!/bin/sh\necho 'error: no pods for service' >&2\nexit 1\n")
    kubectl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(smoke.SmokeFailure, match="port-forward exited: error: no pods"):
        smoke.check_server(_smoke_args(smoke), "diabetes", "3", smoke.BUILTIN_ROWS)


def test_smoke_job_from_cronjob_is_a_valid_owned_job(smoke, rendered, tmp_path):
    from kubernetes import client

    cronjob = dict(objects(rendered["kind-deploy"])[BATCH])
    cronjob["metadata"] = {**cronjob["metadata"], "uid": "1234-abcd"}
    api = client.ApiClient()
    source = client.V1CronJob.from_dict(cronjob)

    created = []

    class FakeBatch:
        def read_namespaced_cron_job(self, name, namespace):
            assert (name, namespace) == ("mlferry-batch", "mlferry")
            return source

        def create_namespaced_job(self, namespace, body):
            created.append(api.sanitize_for_serialization(body))

    name = smoke.start_job(FakeBatch(), "mlferry", "mlferry-batch", "smoke-1")
    (job,) = created
    assert job["metadata"]["name"] == name
    assert name.startswith("mlferry-batch-smoke-")
    assert (
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    )
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "CronJob",
        "mlferry-batch",
        "1234-abcd",
    )
    (batch,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "MLFERRY_RUN_KEY", "value": "smoke-1"} in batch["env"]
    assert batch["args"][:2] == ["score", "--job"]
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    validator = Path(sys.executable).with_name("kubernetes-validate")
    done = subprocess.run(
        [str(validator), "--strict", "--quiet", "-k", K8S_SCHEMA_VERSION, str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the kind path, end to end ---------------------------------------------------------


@pytest.mark.kind
@pytest.mark.timeout(3600)
def test_kind_path_serves_and_scores_end_to_end(tmp_path):
    if shutil.which("kind") is None:
        pytest.skip(
            "kind not found on PATH: the kind path (make model image cluster load "
            "deploy smoke batch-now) needs kind, kubectl and a Docker engine that can "
            "pull kindest/node"
        )
    _kubectl()
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers `docker info`: the kind path needs one")

    knobs = [
        "CLUSTER=mlferry-pytest",
        f"KIND_DATA={tmp_path / 'data'}",
        "K8S_TIMEOUT=600",
    ]
    mlferry = str(ROOT / ".venv" / "bin" / "mlferry")
    status = subprocess.run([mlferry, "registry", "status"], capture_output=True)
    registry_was_up = status.returncode == 0
    targets = ("model", "image", "cluster", "load", "deploy", "smoke", "batch-now")
    try:
        for target in targets:
            done = subprocess.run(
                ["make", target, *knobs], cwd=ROOT, capture_output=True, text=True
            )
            assert done.returncode == 0, (
                f"make {target}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
    finally:
        subprocess.run(["make", "cluster-down", *knobs], cwd=ROOT, capture_output=True)
        if not registry_was_up:
            subprocess.run([mlferry, "registry", "stop"], cwd=ROOT, capture_output=True)
