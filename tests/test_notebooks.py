"""The notebooks run top to bottom against a real registry, and are stored clean."""

import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, free_port
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mlferry import demo, whatif
from mlferry.scoring import load_model

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BATCH_NOTEBOOKS = [path for path in NOTEBOOKS if path.name.startswith("01")]
SERVICE_NOTEBOOKS = [path for path in NOTEBOOKS if path.name.startswith("02")]
# What each notebook must leave behind: rows per output job (batch notebooks), lines
# it prints ({version}: the demo model's; {port}: the session registry's; {at_27} and
# {at_32}: the in-process answers to the BMI question), plots it shows.
EXPECTED = {
    "01-batch-and-what-if.ipynb": {
        "rows": {"diabetes-history": 442, "notebook-whatif": 72},
        "text": [
            "using the embedded registry at http://127.0.0.1:{port}",
            "diabetes@champion → version {version}",
            "SchemaMismatch: column 'bmi', row 3: '27.1 kg/m2' is not a number",
            "diabetes version {version} predicts a progression of",
        ],
        "images": 3,
    },
    "02-model-as-a-service.ipynb": {
        "text": [
            "serving diabetes version {version} at http://127.0.0.1:",
            '"model_version": "{version}"',
            "answered by diabetes version {version}",
            "HTTP 400 {{'error': ",
            "column 'bmi' is missing; the model expects: age, sex, bmi, bp,",
            "column 'bmi', row 1: '27.1 kg/m2' is not a number",
            "ServiceError: HTTP 400: ",
            "columns 'bmi', 'bp' are missing",
            "still ready: True",
            "diabetes version {version} predicts a progression of {at_27:.0f} "
            "at BMI 27 and {at_32:.0f} at BMI 32",
            "97 predictions, service and in-process identical: True",
            "rest_server_requests_total{{",
            'status_code="400"}}',
            "stopped with exit code 0; ready: False",
        ],
        "images": 1,
    },
}
CELL_TIMEOUT = 300  # seconds per cell; a whole notebook takes well under a minute
# The kernel gets none of these from the caller's shell: the test picks the registry.
_STRIPPED_ENV = ("MLFLOW_", "MLFERRY_", "DAGSHUB_", "USE_DAGSHUB", "MPLBACKEND")
_PROBE = "import sys; print('kernel python:', sys.executable)"
# "starting MLServer (pid N)" in the log, "MLServer pid N" from the notebook.
_PID = re.compile(r"MLServer \(?pid (\d+)")


def outputs_text(notebook) -> str:
    """Everything the code cells printed or displayed as text, joined."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                parts.append(output["text"])
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def images(notebook) -> list[str]:
    """The PNG images the code cells displayed (base64)."""
    return [
        output["data"]["image/png"]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


@pytest.fixture(scope="session")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A kernelspec `python3` that is this interpreter (the project's .venv).

    Only this folder is searched, so kernels installed for the user or the system
    cannot take the name over, and a fresh clone needs no `ipykernel install`.
    """
    spec = tmp_path_factory.mktemp("jupyter") / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher"]
                + ["-f", "{connection_file}"],
                "display_name": "Python 3 (mlferry .venv)",
                "language": "python",
                # Lets the kernel manager encrypt the kernel's sockets (CurveZMQ).
                "metadata": {"supported_encryption": ["curve"]},
            }
        )
    )
    return [str(spec.parent)]


@pytest.fixture
def run_notebook(registry_server, session_home, kernel_dirs, tmp_path):
    """Execute a notebook in a fresh kernel against the session registry.

    Call it once per test with the notebook's path and extra kernel env; it returns
    the executed notebook (also saved to tmp_path, even when a cell fails) or raises
    nbclient's CellExecutionError, which shows the failing cell and its traceback.
    The kernel reads and writes only tmp_path/in, tmp_path/out and tmp_path/scratch
    (a model server's settings and log), and, unless the extra env sets one, has no
    MLFLOW_TRACKING_URI: the notebook finds the embedded registry from MLFERRY_HOME
    and MLFERRY_REGISTRY_PORT.
    """

    def execute(path: Path, **extra_env: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env |= {
            "MLFERRY_HOME": str(session_home),
            "MLFERRY_REGISTRY_PORT": str(registry_server.port),
            "MLFERRY_INPUT_DIR": str(tmp_path / "in"),
            "MLFERRY_OUTPUT_DIR": str(tmp_path / "out"),
            "MLFERRY_SCRATCH_DIR": str(tmp_path / "scratch"),
            "IPYTHONDIR": str(tmp_path / "ipython"),  # no user profile or startup files
        } | extra_env

        notebook = nbformat.read(path, as_version=4)
        # One extra cell at the end (this copy only) tells which interpreter ran.
        notebook.cells.append(nbformat.v4.new_code_cell(_PROBE))
        manager = AsyncKernelManager(
            kernel_name=notebook.metadata.kernelspec.name,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs),
            connection_file=str(tmp_path / "kernel-connection.json"),
            transport_encryption="auto",
        )
        client = NotebookClient(
            notebook,
            km=manager,
            timeout=CELL_TIMEOUT,
            resources={"metadata": {"path": str(path.parent)}},
        )
        try:
            client.execute(env=env)
        finally:
            # nbclient leaves a kernel manager it was given running: stop it here.
            if manager.has_kernel:
                run_sync(manager.shutdown_kernel)()
            nbformat.write(notebook, tmp_path / f"{path.stem}.executed.ipynb")

        probe = notebook.cells.pop()
        printed = "".join(output.get("text", "") for output in probe.outputs)
        assert printed == f"kernel python: {sys.executable}\n"
        return notebook

    return execute


@pytest.mark.parametrize("path", BATCH_NOTEBOOKS, ids=lambda p: p.name)
def test_batch_notebooks_run_and_publish_pinned_output(
    run_notebook, registry_server, demo_version, tmp_path, path
):
    expected = EXPECTED[path.name]
    notebook = run_notebook(path)
    text = outputs_text(notebook)

    # Every published run: predictions, manifest and marker, from the pinned version.
    runs = {run.parent.name: run for run in (tmp_path / "out").glob("*/run=*")}
    assert set(runs) == set(expected["rows"])
    for job, run in runs.items():
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["model"]["name"] == "diabetes"
        assert manifest["model"]["version"] == demo_version
        assert manifest["rows_out"] == expected["rows"][job]
        assert (run / manifest["output"]["file"]).stat().st_size > 0
        assert (run / "_SUCCESS").exists()
    assert (runs["diabetes-history"] / "predictions.parquet").exists()

    # What the reader sees: the version, the messages and answers, the plots.
    assert f"version {demo_version}" in text
    for line in expected["text"]:
        assert line.format(version=demo_version, port=registry_server.port) in text
    assert len(images(notebook)) == expected["images"]


def test_batch_notebook_uses_mlflow_tracking_uri_when_set(
    run_notebook, registry_server, demo_version, tmp_path
):
    # The embedded settings point at a dead port: only the URI can find the model.
    notebook = run_notebook(
        ROOT / "notebooks" / "01-batch-and-what-if.ipynb",
        MLFLOW_TRACKING_URI=registry_server.url,
        MLFERRY_REGISTRY_PORT=str(free_port()),
    )
    text = outputs_text(notebook)
    assert f"registry: {registry_server.url}" in text
    assert "registry 127.0.0.1 answers" in text
    assert "embedded registry" not in text
    (run,) = (tmp_path / "out" / "diabetes-history").glob("run=*")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["version"] == demo_version


def server_pids(executed: Path) -> list[int]:
    """The MLServer PIDs a notebook printed, from its executed copy."""
    if not executed.exists():  # the kernel never ran a cell
        return []
    notebook = nbformat.read(executed, as_version=4)
    return sorted({int(pid) for pid in _PID.findall(outputs_text(notebook))})


def session_members(leader: int) -> list[int]:
    """Live processes of the session `leader` heads: MLServer and its workers.

    `serving.Server` starts MLServer in a session of its own, so a worker that
    outlived it still carries its session id (a reused PID would not).
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After "pid (command)": state, ppid, pgrp, session, ...
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # the process exited while we looked
        if int(session) == leader and state != "Z":
            members.append(int(stat.parent.name))
    return members


def survivors(pids: list[int], wait: float = 30.0) -> list[int]:
    """Processes of these MLServer sessions still alive after `wait` seconds.

    Any found are killed here, so a failing test leaves no server behind.
    """
    deadline = time.monotonic() + wait
    while True:
        alive = [member for pid in pids for member in session_members(pid)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for member in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    return alive


def bmi_question_in_process(settings_for, input_dir: Path) -> tuple[float, float]:
    """Notebook 01's answer: the median patient at BMI 27 and 32, in process."""
    model = load_model(settings_for())
    base = whatif.baseline({"median_of": demo.HISTORY_FILE}, model.columns, input_dir)
    question = whatif.scenarios(base, {"bmi": [27, 32]}, model.columns)
    at_27, at_32 = model.predict(question)["prediction"]
    return at_27, at_32


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(),
    reason="needs /proc to find MLServer processes",
)
@pytest.mark.parametrize("path", SERVICE_NOTEBOOKS, ids=lambda p: p.name)
def test_service_notebooks_serve_answer_and_stop_their_server(
    run_notebook, settings_for, demo_version, tmp_path, path
):
    expected = EXPECTED[path.name]
    try:
        notebook = run_notebook(path)
    finally:
        pids = server_pids(tmp_path / f"{path.stem}.executed.ipynb")
        left = survivors(pids)
    text = outputs_text(notebook)

    # The notebook started a server, said which, and nothing of it is left.
    assert pids, "the notebook printed no MLServer pid"
    assert left == [], f"MLServer processes still running after the notebook: {left}"

    # What the reader sees: versions, 400 reasons, the answers notebook 01 gives.
    at_27, at_32 = bmi_question_in_process(settings_for, tmp_path / "in")
    for line in expected["text"]:
        wanted = line.format(version=demo_version, at_27=at_27, at_32=at_32)
        assert wanted in text
    assert "Traceback" not in text
    assert len(images(notebook)) == expected["images"]
    assert not (tmp_path / "out").exists(), "a service notebook publishes no batch run"


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(),
    reason="needs /proc to find MLServer processes",
)
def test_service_notebook_stops_its_server_when_a_later_cell_fails(
    run_notebook, demo_version, tmp_path
):
    # A copy that fails right after the server is up, as a reader's edit might.
    source = ROOT / "notebooks" / "02-model-as-a-service.ipynb"
    notebook = nbformat.read(source, as_version=4)
    (start,) = [
        number
        for number, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and "server.start()" in cell.source
    ]
    notebook.cells.insert(
        start + 1, nbformat.v4.new_code_cell("raise RuntimeError('a cell failed')")
    )
    copy = tmp_path / "notebooks" / source.name
    copy.parent.mkdir()
    nbformat.write(notebook, copy)

    try:
        with pytest.raises(CellExecutionError, match="a cell failed"):
            run_notebook(copy)
    finally:
        pids = server_pids(tmp_path / f"{copy.stem}.executed.ipynb")
        left = survivors(pids)

    assert pids, "the server was not started before the failing cell"
    assert left == [], f"MLServer processes still running after the kernel: {left}"


def test_every_notebook_has_expectations():
    assert BATCH_NOTEBOOKS, "no notebook 01-*.ipynb in notebooks/"
    assert SERVICE_NOTEBOOKS, "no notebook 02-*.ipynb in notebooks/"
    assert {path.name for path in NOTEBOOKS} == set(EXPECTED)
    assert set(NOTEBOOKS) == set(BATCH_NOTEBOOKS) | set(SERVICE_NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}
    for number, cell in enumerate(notebook.cells, start=1):
        where = f"{path.name} cell {number}"
        assert set(cell.metadata) <= {"tags"}, f"{where}: metadata {cell.metadata}"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{where} holds outputs"
            assert cell.execution_count is None, f"{where} holds an execution count"
