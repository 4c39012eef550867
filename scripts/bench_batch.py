"""Batch benchmark: end-to-end scoring against in-process predict, and memory growth.

Measures, in one run:
  1. in-process `pyfunc.predict` rows/s on 1,000,000 rows already in memory;
  2. `mlferry` batch end-to-end rows/s on the same rows from a file (read, validate,
     predict, write Parquet), in a fresh process; ratio = 2 / 1 (target >= 0.90);
  3. peak memory (max RSS) of that process at 5,000,000 rows over 1,000,000 rows
     (target <= 1.25).
Model loading is outside every timing. Usage: python scripts/bench_batch.py [--rows N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def make_model(folder: Path) -> Path:
    """The demo model saved as a local pinned folder (the registry is not measured)."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.ensemble import GradientBoostingRegressor

    from mlferry import demo, registry

    features, target = demo.dataset()
    model = GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, random_state=0
    ).fit(features, target)
    path = folder / "model"
    mlflow.sklearn.save_model(
        model,
        path,
        signature=infer_signature(features, model.predict(features)),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=demo._trusted_types(model),
    )
    pin = registry.PinnedModel("diabetes", "1", "models:/diabetes/1", run_id="bench")
    (path / registry.PIN_FILE).write_text(json.dumps(pin.to_dict()))
    return path


def make_rows(rows: int, path: Path, fmt: str) -> Path:
    """`rows` patients resampled from the diabetes data with a little noise."""
    from mlferry import demo

    features, _ = demo.dataset()
    rng = np.random.default_rng(0)
    picks = features.to_numpy()[rng.integers(0, len(features), rows)]
    frame = pd.DataFrame(picks * rng.normal(1, 0.02, picks.shape), columns=FEATURES)
    frame.insert(0, "patient_id", np.arange(rows))
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def child(model_dir: str, data: str, out: str) -> None:
    """Score one file in this process; print seconds and rows as JSON."""
    from mlferry.scoring import load_model, score
    from mlferry.settings import load_settings
    from mlferry.sources import FileSource

    settings = load_settings(model_dir=model_dir, output_dir=out, run_key="bench")
    model = load_model(settings)
    print("loaded", flush=True)
    started = time.perf_counter()
    manifest = score(
        model,
        FileSource(Path(data), settings.chunk_rows),
        job="bench",
        output_dir=settings.output_dir,
        run_key="bench",
        workers=settings.score_workers,
    )
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": manifest["rows_out"]}), flush=True)


def _pss_mib(pid: int) -> float:
    """Proportional set size of one process (shared pages split among sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as stream:
            for line in stream:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    """`pid` and its direct children (the scoring workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return [pid, *children]


def run_child(model_dir: Path, data: Path, out: Path) -> dict:
    """Run one scoring process; sample its memory (with workers) every 50 ms."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(model_dir), str(data), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, MLFERRY_LOG_LEVEL="WARNING"),
    )
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, sum(_pss_mib(pid) for pid in _tree(process.pid)))
        time.sleep(0.05)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"scoring failed ({process.returncode}): {output}")
    result = json.loads(output.strip().splitlines()[-1])
    return result | {"peak_mib": peak}


def in_process(model_dir: Path, data: Path, repeats: int = 3) -> float:
    """Best rows/s of pyfunc.predict on the whole frame, already in memory."""
    import mlflow

    model = mlflow.pyfunc.load_model(str(model_dir))
    frame = pd.read_parquet(data)[FEATURES]
    model.predict(frame.head(1000))  # warm
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(frame)
        best = max(best, len(frame) / (time.perf_counter() - started))
    return best


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--large", type=int, default=5_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlferry-bench-") as scratch:
        folder = Path(scratch)
        model_dir = make_model(folder)
        small = make_rows(args.rows, folder / "small.parquet", "parquet")
        small_csv = make_rows(args.rows, folder / "small.csv", "csv")
        large = make_rows(args.large, folder / "large.parquet", "parquet")

        baseline = in_process(model_dir, small)
        runs = [run_child(model_dir, small, folder / f"out{i}") for i in range(3)]
        best = min(runs, key=lambda r: r["seconds"])
        batch_rate = best["rows"] / best["seconds"]
        csv_run = run_child(model_dir, small_csv, folder / "out-csv")
        large_run = run_child(model_dir, large, folder / "out-large")

    chunk = os.environ.get("MLFERRY_CHUNK_ROWS", "100000")
    workers = os.environ.get("MLFERRY_SCORE_WORKERS", "default")
    print(f"machine: {os.cpu_count()} cores; chunk rows {chunk}; workers {workers}")
    print(f"in-process pyfunc.predict, {args.rows:,} rows: {baseline:,.0f} rows/s")
    timings = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    print(
        f"batch end to end (Parquet in, Parquet out), best of 3: {batch_rate:,.0f} "
        f"rows/s ({best['seconds']:.2f}s; runs {timings}s)"
    )
    print(
        f"batch end to end (CSV in, Parquet out): "
        f"{csv_run['rows'] / csv_run['seconds']:,.0f} rows/s"
    )
    print(
        f"peak memory (PSS of the job and its workers): {best['peak_mib']:.0f} MiB at "
        f"{args.rows:,} rows, {large_run['peak_mib']:.0f} MiB at {args.large:,} rows"
    )
    throughput = batch_rate / baseline
    memory = large_run["peak_mib"] / best["peak_mib"]
    print(f"throughput ratio (batch / in-process): {throughput:.2f}  (target >= 0.90)")
    print(
        f"memory ratio ({args.large:,} / {args.rows:,} rows): {memory:.2f}  "
        "(target <= 1.25)"
    )


if __name__ == "__main__":
    main()
