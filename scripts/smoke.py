"""Smoke test of mlferry deployed on Kubernetes (`make smoke`, after `make deploy`).

Checks, in order, and stops at the first failure with the reason:

1. the server Deployment has rolled out: every replica updated and available;
2. through `kubectl port-forward`, the model is ready, and a V2 inference on demo rows
   answers one finite number per row from the pinned model version;
3. a Job started from the CronJob completes, and (kind) its output folder on the host
   holds the predictions, a manifest.json naming the same model version, and _SUCCESS.

The pinned version is MODEL_VERSION from build/image.env (the image's baked model),
else --expect-version, else the version `make deploy` wrote into the pod annotation
io.mlferry/model-version. Exit status: 0 all good, 1 a check failed, 2 bad arguments.
"""

import argparse
import contextlib
import csv
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import requests

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
DEMO_INPUT = "diabetes-history.csv"
# Two patients in the demo model's real units, used when the host input is not at hand.
BUILTIN_ROWS = [
    dict(zip(FEATURES, [59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87], strict=True)),
    dict(zip(FEATURES, [48, 1, 21.6, 87, 183, 103.2, 70, 3, 3.8918, 69], strict=True)),
]
VERSION_ANNOTATION = "io.mlferry/model-version"
NAME_ANNOTATION = "io.mlferry/model-name"


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


# -- pure helpers (no cluster needed) ------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """Read KEY=VALUE lines (comments and blank lines skipped, quotes stripped)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("\"'")
    return values


def expected_version(
    explicit: str | None, image_env: Path | None, annotations: dict[str, str]
) -> str:
    """The model version the deployment must serve, and where it came from."""
    if explicit:
        return explicit
    if image_env is not None:
        if not Path(image_env).exists():
            raise SmokeFailure(
                f"{image_env} not found; build the image with 'make image'"
            )
        version = read_env_file(image_env).get("MODEL_VERSION")
        if not version:
            raise SmokeFailure(f"{image_env} has no MODEL_VERSION")
        return version
    version = annotations.get(VERSION_ANNOTATION)
    if not version or version == "unpinned":
        raise SmokeFailure(
            f"the server pods carry no pinned {VERSION_ANNOTATION} "
            f"(got {version!r}); deploy with 'make deploy' or pass --expect-version"
        )
    return version


def demo_rows(data_dir: Path | None, limit: int = 5) -> list[dict[str, float]]:
    """The first rows of the demo input on the host, or two built-in rows."""
    path = Path(data_dir) / "in" / DEMO_INPUT if data_dir else None
    if path is None or not path.exists():
        return [dict(row) for row in BUILTIN_ROWS]
    rows = []
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [name for name in FEATURES if name not in (reader.fieldnames or [])]
        if missing:
            raise SmokeFailure(
                f"{path} lacks the model's columns: {', '.join(missing)}"
            )
        for record in reader:
            rows.append({name: float(record[name]) for name in FEATURES})
            if len(rows) == limit:
                break
    if not rows:
        raise SmokeFailure(f"{path} holds no rows")
    return rows


def v2_request(rows: list[dict[str, float]]) -> dict:
    """An Open Inference Protocol request: one FP64 input per column."""
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": "FP64",
                "data": [float(row[name]) for row in rows],
            }
            for name in FEATURES
        ]
    }


def check_v2_response(body: dict, rows: int, model: str, version: str) -> list[float]:
    """Check a V2 response: the right model and version, one finite number per row."""
    if body.get("model_name") != model:
        raise SmokeFailure(
            f"answer is from model {body.get('model_name')!r}, not {model!r}"
        )
    if str(body.get("model_version")) != str(version):
        raise SmokeFailure(
            f"answer is from model version {body.get('model_version')!r}; "
            f"the deployment pins version {version!r}"
        )
    outputs = body.get("outputs") or []
    if not outputs:
        raise SmokeFailure("answer has no outputs")
    data = outputs[0].get("data")
    if not isinstance(data, list) or len(data) != rows:
        count = len(data) if isinstance(data, list) else data
        raise SmokeFailure(f"expected {rows} predictions, got {count!r}")
    for index, value in enumerate(data):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SmokeFailure(f"prediction {index} is not a number: {value!r}")
        if not math.isfinite(value):
            raise SmokeFailure(f"prediction {index} is not finite: {value!r}")
    return [float(value) for value in data]


def manifest_model_version(manifest: dict) -> str | None:
    """The model version a batch manifest records."""
    model = manifest.get("model")
    if isinstance(model, dict) and model.get("version") is not None:
        return str(model["version"])
    if manifest.get("model_version") is not None:
        return str(manifest["model_version"])
    return None


def check_output_folder(out_dir: Path, run_key: str, version: str) -> Path:
    """Find the run's output folder under OUT_DIR and check what it holds."""
    found = sorted(Path(out_dir).glob(f"*/run={run_key}"))
    if len(found) != 1:
        raise SmokeFailure(
            f"expected one folder */run={run_key} under {out_dir}, found {len(found)}"
        )
    folder = found[0]
    if not (folder / "_SUCCESS").exists():
        raise SmokeFailure(f"{folder} has no _SUCCESS marker")
    if not any(folder.glob("predictions.*")):
        raise SmokeFailure(f"{folder} has no predictions file")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise SmokeFailure(f"{folder} has no manifest.json") from None
    except json.JSONDecodeError as exc:
        raise SmokeFailure(f"{folder}/manifest.json is not JSON: {exc}") from None
    recorded = manifest_model_version(manifest)
    if recorded != str(version):
        raise SmokeFailure(
            f"{folder}/manifest.json records model version {recorded!r}, "
            f"expected {version!r}"
        )
    return folder


# -- cluster steps ---------------------------------------------------------------------


def wait_for_rollout(apps, namespace: str, name: str, timeout: float):
    """Wait until every replica of the Deployment is updated and available."""
    deadline = time.monotonic() + timeout
    while True:
        deployment = apps.read_namespaced_deployment(name, namespace)
        status, wanted = deployment.status, deployment.spec.replicas or 0
        if (
            (status.observed_generation or 0) >= deployment.metadata.generation
            and (status.updated_replicas or 0) == wanted
            and (status.available_replicas or 0) == wanted
            and (status.replicas or 0) == wanted
        ):
            return deployment
        if time.monotonic() > deadline:
            raise SmokeFailure(
                f"deployment {name} not rolled out after {timeout:.0f}s: "
                f"{status.updated_replicas or 0} updated, "
                f"{status.available_replicas or 0} available of {wanted}"
            )
        time.sleep(3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PortForward:
    """A running `kubectl port-forward`: its local URL, and whether it still runs."""

    def __init__(self, url: str, process: subprocess.Popen, errors):
        self.url, self._process, self._errors = url, process, errors

    def alive(self) -> bool:
        return self._process.poll() is None

    def errors(self) -> str:
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace").strip()[-500:]


@contextlib.contextmanager
def port_forward(context: str, namespace: str, service: str) -> Iterator[PortForward]:
    """Forward a free port on 127.0.0.1 to the service's http port while in use."""
    port = free_port()
    command = ["kubectl", "--context", context, "--namespace", namespace]
    command += ["port-forward", "--address", "127.0.0.1"]
    command += [f"service/{service}", f"{port}:http"]
    with tempfile.TemporaryFile() as errors:
        # stdout gets a line per connection; nobody reads it.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            yield PortForward(f"http://127.0.0.1:{port}", process, errors)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_model_ready(forward: PortForward, model: str, timeout: float) -> None:
    """Poll /v2/models/MODEL/ready until 200, within TIMEOUT seconds."""
    url = f"{forward.url}/v2/models/{model}/ready"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not forward.alive():
            raise SmokeFailure(f"kubectl port-forward exited: {forward.errors()}")
        try:
            answer = requests.get(url, timeout=3)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(1)
    raise SmokeFailure(f"{url} not ready within {timeout:.0f}s (last: {last})")


def infer(base_url: str, model: str, rows: list[dict[str, float]]) -> dict:
    url = f"{base_url}/v2/models/{model}/infer"
    answer = requests.post(url, json=v2_request(rows), timeout=30)
    if answer.status_code != 200:
        raise SmokeFailure(
            f"POST {url} answered {answer.status_code}: {answer.text[:500]}"
        )
    try:
        return answer.json()
    except ValueError:
        raise SmokeFailure(
            f"POST {url} answered non-JSON: {answer.text[:200]}"
        ) from None


def check_server(args, model: str, version: str, rows) -> None:
    """Port-forward and infer, retrying a dropped forward a bounded number of times."""
    for attempt in range(1, args.attempts + 1):
        try:
            with port_forward(args.context, args.namespace, args.service) as forward:
                wait_model_ready(forward, model, args.ready_timeout)
                body = infer(forward.url, model, rows)
        except (SmokeFailure, requests.RequestException) as exc:
            if attempt == args.attempts:
                raise SmokeFailure(
                    f"server check failed {attempt} times: {exc}"
                ) from None
            say(f"attempt {attempt} failed ({exc}); retrying")
            time.sleep(2)
            continue
        predictions = check_v2_response(body, len(rows), model, version)
        shown = ", ".join(f"{value:.1f}" for value in predictions)
        say(f"ok: {len(rows)} rows scored by {model} version {version}: {shown}")
        return


def wait_no_active_run(batch, namespace: str, cronjob: str, timeout: float) -> None:
    """Wait for a scheduled run to finish, so ours does not overlap it."""
    deadline = time.monotonic() + timeout
    while batch.read_namespaced_cron_job(cronjob, namespace).status.active:
        if time.monotonic() > deadline:
            raise SmokeFailure(
                f"cronjob {cronjob} still has a run going after {timeout}s"
            )
        time.sleep(3)


def start_job(batch, namespace: str, cronjob: str, run_key: str) -> str:
    """Create a Job from the CronJob's template, like `kubectl create job --from`."""
    from kubernetes import client

    source = batch.read_namespaced_cron_job(cronjob, namespace)
    template = source.spec.job_template
    name = f"{cronjob}-smoke-{datetime.now(UTC):%Y%m%d%H%M%S}"
    annotations = dict(template.metadata.annotations or {}) if template.metadata else {}
    annotations["cronjob.kubernetes.io/instantiate"] = "manual"
    labels = dict(template.metadata.labels or {}) if template.metadata else {}

    # A run key of its own, so the output folder is this run's and nobody else's.
    spec = template.spec
    for container in spec.template.spec.containers:
        container.env = [
            e for e in (container.env or []) if e.name != "MLFERRY_RUN_KEY"
        ]
        container.env.append(client.V1EnvVar(name="MLFERRY_RUN_KEY", value=run_key))

    job = client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name,
            labels=labels,
            annotations=annotations,
            owner_references=[
                client.V1OwnerReference(
                    api_version="batch/v1",
                    kind="CronJob",
                    name=source.metadata.name,
                    uid=source.metadata.uid,
                    controller=True,
                    block_owner_deletion=True,
                )
            ],
        ),
        spec=spec,
    )
    batch.create_namespaced_job(namespace, job)
    return name


def job_logs(core, namespace: str, job: str) -> str:
    """The last lines of every container of the Job's pods, for a failure message."""
    lines = []
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    for pod in pods:
        containers = [c.name for c in pod.spec.init_containers or []]
        containers += [c.name for c in pod.spec.containers]
        for container in containers:
            try:
                text = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=container, tail_lines=20
                )
            except Exception as exc:  # a pod that never started has no log
                text = f"(no log: {type(exc).__name__})"
            lines.append(f"--- {pod.metadata.name}/{container}\n{text}")
    return "\n".join(lines) or "(no pods)"


def wait_for_job(batch, core, namespace: str, job: str, timeout: float) -> None:
    """Wait for the Job to complete; fail with its logs if it fails or times out."""
    deadline = time.monotonic() + timeout
    while True:
        status = batch.read_namespaced_job_status(job, namespace).status
        done = {c.type for c in status.conditions or [] if c.status == "True"}
        if "Complete" in done:
            return
        if "Failed" in done or time.monotonic() > deadline:
            why = "failed" if "Failed" in done else f"did not finish in {timeout:.0f}s"
            raise SmokeFailure(f"job {job} {why}\n{job_logs(core, namespace, job)}")
        time.sleep(3)


def check_batch(args, batch, core, version: str) -> None:
    run_key = f"smoke-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    wait_no_active_run(batch, args.namespace, args.cronjob, args.timeout)
    job = start_job(batch, args.namespace, args.cronjob, run_key)
    say(f"started job {job} (run key {run_key}); waiting up to {args.timeout:.0f}s")
    wait_for_job(batch, core, args.namespace, job, args.timeout)
    if args.data_dir is None:
        say(f"ok: job {job} completed (no --data-dir: output folder not checked)")
        return
    folder = check_output_folder(Path(args.data_dir) / "out", run_key, version)
    say(f"ok: job {job} wrote {folder} with model version {version}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smoke.py",
        description="Check that mlferry's server and batch job work on the cluster.",
    )
    parser.add_argument("--context", default="kind-mlferry", help="kubectl context")
    parser.add_argument("--namespace", default="mlferry")
    parser.add_argument("--deployment", default="mlferry-server")
    parser.add_argument("--service", default="mlferry-server")
    parser.add_argument("--cronjob", default="mlferry-batch")
    parser.add_argument(
        "--image-env", type=Path, help="build/image.env; its MODEL_VERSION is expected"
    )
    parser.add_argument("--expect-version", help="model version the server must report")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="host folder mounted as the batch in/ and out/ (kind: .mlferry/kind/data)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds for rollout and Job"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60, help="seconds for model readiness"
    )
    parser.add_argument(
        "--attempts",
        type=int,
        choices=range(1, 11),
        default=3,
        metavar="1-10",
        help="port-forward attempts",
    )
    parser.add_argument(
        "--skip-batch", action="store_true", help="check the server only"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=args.context)
        except Exception as exc:
            raise SmokeFailure(
                f"cannot use kubectl context {args.context!r}: {exc}"
            ) from None
        apps, batch, core = client.AppsV1Api(), client.BatchV1Api(), client.CoreV1Api()

        deployment = wait_for_rollout(
            apps, args.namespace, args.deployment, args.timeout
        )
        annotations = deployment.spec.template.metadata.annotations or {}
        version = expected_version(args.expect_version, args.image_env, annotations)
        pinned = annotations.get(VERSION_ANNOTATION)
        if pinned != version:
            raise SmokeFailure(
                f"pods are annotated with model version {pinned!r}, expected "
                f"{version!r} (was the image rebuilt without 'make deploy'?)"
            )
        model = annotations.get(NAME_ANNOTATION, "diabetes")
        say(f"ok: deployment {args.deployment} rolled out ({model} version {version})")

        check_server(args, model, version, demo_rows(args.data_dir))
        if not args.skip_batch:
            check_batch(args, batch, core, version)
    except SmokeFailure as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    say("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
