"""Serving benchmark: mlferry's MLServer against `mlflow models serve` and pyfunc.

Measures, in one run, on 127.0.0.1 only, for the demo model saved as a local folder:
  1. in-process `pyfunc.predict`, 1 and 100 rows: p50 latency and calls/s (ceiling);
  2. mlferry's server (MLServer + MlferryRuntime), V2 `/v2/models/NAME/infer` and
     `/invocations`, with MLFERRY_WORKERS=N for each N in --workers;
  3. `mlflow models serve` of the same folder with N uvicorn workers, `/invocations`;
requests/s, p50 and p99 for 1-row and 100-row requests at 1 and 8 concurrent clients.
Load comes from wrk (one thread per client, a warm-up, then --duration seconds, at
most --max-requests per thread). Servers start one at a time and every pass runs them
all again; the figures are the mean of the passes, each flagged when they differ by
more than 10%. Targets: at 8 clients, mlferry req/s / mlflow req/s >= 1.0 (same
workers, both sizes); at 1 client, 1-row p50 <= 2.5x the in-process p50.
Usage: python scripts/bench_serve.py [--workers 1,2] [--duration 8] [--passes 2]
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from bench_batch import FEATURES, make_model

MODEL = "diabetes"
SIZES = (1, 100)
CLIENTS = (1, 8)
THROUGHPUT_TARGET = 1.0
LATENCY_TARGET = 2.5
STABLE = 0.10

# wrk: POST one body; stop a thread after LIMIT responses; report as one JSON line.
WRK_SCRIPT = """\
local body = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = body:read("*a")
body:close()
wrk.headers["Content-Type"] = "application/json"

local limit, count = {limit}, 0
function response(status, headers, body)
  count = count + 1
  if count >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Target:
    """One endpoint of one running server configuration."""

    server: str  # mlferry | mlflow
    workers: int
    endpoint: str  # v2 | invocations

    @property
    def label(self) -> str:
        path = f"/v2/models/{MODEL}/infer" if self.endpoint == "v2" else "/invocations"
        return f"{self.server} `{path}`"


# -- requests and the in-process ceiling ---------------------------------------------


def make_bodies(frame) -> dict[tuple[str, int], bytes]:
    """V2 and dataframe_split bodies for each request size, from the first rows."""
    bodies = {}
    for size in SIZES:
        rows = frame.head(size)
        v2 = {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP64",
                    "shape": [size],
                    "data": [float(v) for v in rows[name]],
                }
                for name in FEATURES
            ]
        }
        split = {
            "dataframe_split": {
                "columns": FEATURES,
                "data": rows[FEATURES].astype(float).to_numpy().tolist(),
            }
        }
        bodies["v2", size] = json.dumps(v2).encode()
        bodies["invocations", size] = json.dumps(split).encode()
    return bodies


def in_process(model, frame, seconds: float, max_calls: int) -> dict[int, dict]:
    """p50 latency and calls/s of single-threaded `pyfunc.predict`, per size."""
    results = {}
    for size in SIZES:
        rows = frame.head(size)[FEATURES].astype(float).reset_index(drop=True)
        for _ in range(50):  # warm
            model.predict(rows)
        timings = []
        started = time.perf_counter()
        while len(timings) < max_calls and time.perf_counter() - started < seconds:
            begin = time.perf_counter()
            model.predict(rows)
            timings.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        results[size] = {
            "calls_s": len(timings) / elapsed,
            "p50_ms": statistics.median(timings) * 1000,
            "p99_ms": float(np.percentile(timings, 99)) * 1000,
            "calls": len(timings),
        }
    return results


# -- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its start time (to recognise it later)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = _start_time(child)
                frontier.append(child)
    return {child: start for child, start in found.items() if start}


def reap_leftovers(seen: dict[int, str], timeout: float = 15.0) -> list[int]:
    """SIGTERM (then SIGKILL) the processes in `seen` that are still alive."""
    alive = [pid for pid, start in seen.items() if _start_time(pid) == start]
    for pid in alive:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _start_time(pid) == seen[pid]]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return alive


def busy_seconds() -> tuple[float, float]:
    """CPU seconds used so far: by the whole machine, and by this process's tree.

    The tree counts servers and wrk once they have been waited for, so take both
    between measurements; the difference is what other software on the machine used.
    """
    with open("/proc/stat") as stream:
        fields = [int(v) for v in stream.readline().split()[1:]]
    machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    times = os.times()
    return machine, times.user + times.system + times.children_user + (
        times.children_system
    )


class MlferryServer:
    """mlferry's server (serving.prepare + serving.Server) with N inference workers."""

    def __init__(self, model_dir: Path, scratch: Path, workers: int):
        from mlferry import serving
        from mlferry.settings import load_settings

        settings = load_settings(
            home=scratch / "home",
            model_dir=model_dir,
            scratch_dir=scratch,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            workers=workers,
        )
        self.server = serving.Server(
            serving.prepare(settings), log_file=scratch / "mlserver.log"
        )
        self.url = self.server.url
        self.children: dict[int, str] = {}

    def start(self) -> None:
        self.server.start()
        self.children = descendants(self.server.process.pid)

    def stop(self) -> list[int]:
        self.children |= descendants(self.server.process.pid)
        self.server.stop()
        return reap_leftovers(self.children)


class MlflowServer:
    """`mlflow models serve` of the same folder, N uvicorn workers, local env."""

    def __init__(self, model_dir: Path, scratch: Path, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(Path(sys.executable).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            str(model_dir),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-w",
            str(workers),
        ]
        self.scratch = scratch
        self.process: subprocess.Popen | None = None
        self.children: dict[int, str] = {}

    def start(self, timeout: float = 120.0) -> None:
        # It runs `bash -c "exec uvicorn ..."`: uvicorn must be on PATH.
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
        log = open(self.scratch / "mlflow-serve.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.scratch,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.scratch / "mlflow-serve.log").read_text()[-2000:]
                raise SystemExit(f"mlflow models serve exited early:\n{tail}")
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    self.children = descendants(self.process.pid)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"mlflow models serve not ready within {timeout}s")

    def stop(self, timeout: float = 30.0) -> list[int]:
        if self.process is None:
            return []
        self.children |= descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return reap_leftovers(self.children)


# -- load ------------------------------------------------------------------------------


def wrk(url: str, lua: Path, clients: int, seconds: int) -> dict:
    """One wrk run: `clients` connections, one thread each, for `seconds`."""
    command = [
        "wrk",
        f"-t{clients}",
        f"-c{clients}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr or done.stdout}")
    line = next(
        line for line in done.stdout.splitlines() if line.startswith("WRK_RESULT ")
    )
    result = json.loads(line.split(" ", 1)[1])
    seconds_run = result["duration_us"] / 1e6
    return {
        "rps": result["requests"] / seconds_run,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "requests": result["requests"],
        "errors": result["errors"],
    }


def check_answers(url: str, target: Target, bodies: dict, expected: dict) -> None:
    """One request per size: 200 and the same predictions as in-process."""
    path = f"/v2/models/{MODEL}/infer" if target.endpoint == "v2" else "/invocations"
    for size in SIZES:
        response = requests.post(
            f"{url}{path}",
            data=bodies[target.endpoint, size],
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        if response.status_code != 200:
            raise SystemExit(f"{target.label}: HTTP {response.status_code}")
        body = response.json()
        got = body["outputs"][0]["data"] if "outputs" in body else body["predictions"]
        if not np.allclose(got, expected[size]):
            raise SystemExit(f"{target.label}: predictions differ from in-process")


def measure(url, target, lua, args) -> dict:
    """Every size and client count against one endpoint of a running server."""
    path = f"/v2/models/{MODEL}/infer" if target.endpoint == "v2" else "/invocations"
    results = {}
    for size in SIZES:
        for clients in CLIENTS:
            script = lua[target.endpoint, size]
            wrk(f"{url}{path}", script, clients, args.warmup)
            result = wrk(f"{url}{path}", script, clients, args.duration)
            if result["errors"]:
                raise SystemExit(
                    f"{target.label}, {size} rows, {clients} clients: "
                    f"{result['errors']} failed requests"
                )
            results[size, clients] = result
            print(
                f"  {target.label} workers={target.workers} {size:>3} rows "
                f"{clients} clients: {result['rps']:7.1f} req/s  p50 "
                f"{result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
    return results


# -- report ----------------------------------------------------------------------------


def _mean(passes: list[dict], key: str) -> float:
    return statistics.fmean(p[key] for p in passes)


def _stable(passes: list[dict], key: str) -> bool:
    values = [p[key] for p in passes]
    return (max(values) - min(values)) / max(values) <= STABLE


def report(args, ceiling, runs, command, versions, others) -> tuple[str, bool]:
    """The results as markdown, and whether every target was met."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{versions}. wrk: one thread per client, {args.warmup} s warm-up, then "
        f"{args.duration} s per cell, {args.passes} passes. CPU used by other "
        "software during each pass: "
        + ", ".join(f"{share:.0%}" for share in others)
        + " of the machine.",
        "",
        "| path | 1 row | 100 rows |",
        "|---|---|---|",
        "| in-process `pyfunc.predict` | "
        + " | ".join(
            f"{ceiling[s]['calls_s']:,.0f} calls/s, p50 {ceiling[s]['p50_ms']:.2f} ms"
            for s in SIZES
        )
        + " |",
        "",
        "| server | workers | endpoint | rows | clients | req/s | p50 ms | p99 ms "
        "| req/s per pass | passes within 10% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    unstable = 0
    for target, passes in runs.items():
        for size in SIZES:
            for clients in CLIENTS:
                cell = [p[size, clients] for p in passes]
                stable = _stable(cell, "rps") and _stable(cell, "p50_ms")
                unstable += not stable
                per_pass = " / ".join(f"{c['rps']:.0f}" for c in cell)
                lines.append(
                    f"| {target.server} | {target.workers} | {target.label.split()[1]} "
                    f"| {size} | {clients} | {_mean(cell, 'rps'):,.0f} "
                    f"| {_mean(cell, 'p50_ms'):.2f} | {_mean(cell, 'p99_ms'):.2f} "
                    f"| {per_pass} | {'yes' if stable else 'no'} |"
                )

    met = True
    lines += [
        "",
        f"Throughput at {max(CLIENTS)} clients, mlferry / `mlflow models serve` "
        f"(`/invocations`), same workers; target >= {THROUGHPUT_TARGET:.1f}:",
        "",
        "| workers | mlferry endpoint | 1 row | 100 rows |",
        "|---|---|---|---|",
    ]
    for workers in args.workers:
        base = runs[Target("mlflow", workers, "invocations")]
        for endpoint in ("v2", "invocations"):
            ours = runs[Target("mlferry", workers, endpoint)]
            cells = []
            for size in SIZES:
                key = size, max(CLIENTS)
                ours_rps = statistics.fmean(p[key]["rps"] for p in ours)
                ratio = ours_rps / statistics.fmean(p[key]["rps"] for p in base)
                ok = ratio >= THROUGHPUT_TARGET
                met &= ok
                cells.append(f"{ratio:.2f} ({'met' if ok else 'NOT met'})")
            label = Target("mlferry", workers, endpoint).label.split()[1]
            lines.append(f"| {workers} | {label} | {' | '.join(cells)} |")

    lines += [
        "",
        f"Latency at 1 client, 1 row: mlferry p50 / in-process p50 "
        f"({ceiling[1]['p50_ms']:.2f} ms); target <= {LATENCY_TARGET:.1f}:",
        "",
        "| workers | endpoint | p50 ms | ratio |",
        "|---|---|---|---|",
    ]
    for target, passes in runs.items():
        if target.server != "mlferry":
            continue
        p50 = statistics.fmean(p[1, 1]["p50_ms"] for p in passes)
        ratio = p50 / ceiling[1]["p50_ms"]
        ok = ratio <= LATENCY_TARGET
        met &= ok
        lines.append(
            f"| {target.workers} | {target.label.split()[1]} | {p50:.2f} | "
            f"{ratio:.2f} ({'met' if ok else 'NOT met'}) |"
        )
    cells = len(runs) * len(SIZES) * len(CLIENTS)
    lines += [
        "",
        f"Passes within 10% (req/s and p50): {cells - unstable} of {cells} cells.",
        f"Targets: {'all met' if met else 'NOT all met'}.",
    ]
    return "\n".join(lines) + "\n", met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        default="1,2",
        type=lambda text: [int(n) for n in text.split(",")],
        help="comma-separated inference worker counts (default 1,2)",
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per cell")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument(
        "--max-requests", type=int, default=50_000, help="per wrk thread and cell"
    )
    parser.add_argument("--report", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    # SIGTERM unwinds like Ctrl-C, so the servers started so far are stopped.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

    import mlflow
    import mlserver

    from mlferry import demo

    command = "python scripts/bench_serve.py " + " ".join(sys.argv[1:])
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    versions = (
        f"mlflow {mlflow.__version__}, mlserver {mlserver.__version__}, "
        f"{(wrk_version.stdout or wrk_version.stderr).split()[1]}"
    )
    frame, _ = demo.dataset()
    runs: dict[Target, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mlferry-bench-serve-") as scratch:
        folder = Path(scratch)
        model_dir = make_model(folder)
        model = mlflow.pyfunc.load_model(str(model_dir))
        expected = {
            size: np.asarray(model.predict(frame.head(size)[FEATURES].astype(float)))
            for size in SIZES
        }
        ceiling = in_process(model, frame, seconds=3.0, max_calls=20_000)
        print(
            "in-process pyfunc.predict: "
            + ", ".join(f"{s} rows p50 {ceiling[s]['p50_ms']:.2f} ms" for s in SIZES),
            file=sys.stderr,
        )

        bodies = make_bodies(frame)
        lua = {}
        for (endpoint, size), body in bodies.items():
            body_path = folder / f"{endpoint}-{size}.json"
            body_path.write_bytes(body)
            lua[endpoint, size] = folder / f"{endpoint}-{size}.lua"
            lua[endpoint, size].write_text(
                WRK_SCRIPT.format(
                    body_path=json.dumps(str(body_path)), limit=args.max_requests
                )
            )

        others = []
        for number in range(1, args.passes + 1):
            started, (machine, ours) = time.monotonic(), busy_seconds()
            for workers in args.workers:
                for kind, endpoints in (
                    ("mlferry", ("v2", "invocations")),
                    ("mlflow", ("invocations",)),
                ):
                    scratch_dir = folder / f"{kind}-w{workers}-pass{number}"
                    scratch_dir.mkdir()
                    server_class = MlferryServer if kind == "mlferry" else MlflowServer
                    server = server_class(model_dir, scratch_dir, workers)
                    print(f"pass {number}: {kind}, {workers} workers", file=sys.stderr)
                    server.start()
                    try:
                        for endpoint in endpoints:
                            target = Target(kind, workers, endpoint)
                            check_answers(server.url, target, bodies, expected)
                            results = measure(server.url, target, lua, args)
                            runs.setdefault(target, []).append(results)
                    finally:
                        # Let requests wrk left in flight finish: MLServer closes its
                        # workers before its HTTP server, and a request still queued
                        # then holds its shutdown until SIGKILL.
                        time.sleep(1)
                        leftovers = server.stop()
                    if leftovers:
                        print(f"  had to kill leftover {leftovers}", file=sys.stderr)
            machine_now, ours_now = busy_seconds()
            elapsed = (time.monotonic() - started) * (os.cpu_count() or 1)
            others.append(
                max(0.0, (machine_now - machine) - (ours_now - ours)) / elapsed
            )

    text, met = report(args, ceiling, runs, command, versions, others)
    print(text)
    if args.report:
        args.report.write_text(text)


if __name__ == "__main__":
    main()
