"""What-if tables: vary one or two features around a baseline row and score them.

The baseline is a historical row, an explicit row, or the medians of a data file;
every other feature keeps its baseline value, so the predictions show the model's
response to the varied features alone.
"""

import itertools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mlferry.errors import ConfigError
from mlferry.schema import Column
from mlferry.sources import FileSource

log = logging.getLogger(__name__)


def _read_all(path: Path) -> pd.DataFrame:
    return pd.concat(list(FileSource(path, chunk_rows=1_000_000).chunks()))


def baseline(
    spec: dict, columns: list[Column] | None, input_dir: Path
) -> dict[str, object]:
    """The baseline row from a spec.

    Forms:
        {"values": {"age": 50, ...}}                       explicit values
        {"median_of": "data.csv"}                          medians of a file
        {"row_of": "data.csv", "row": 12}                  a data row (1-based)
        {"row_of": "data.csv", "where": {"patient_id": "P0012"}}
    Explicit `values` may also complete or override a row or the medians.
    """
    row: dict[str, object] = {}
    if "median_of" in spec:
        data = _read_all(input_dir / spec["median_of"])
        row = data.median(numeric_only=True).to_dict()
    elif "row_of" in spec:
        data = _read_all(input_dir / spec["row_of"])
        if "where" in spec:
            mask = np.ones(len(data), dtype=bool)
            for name, value in spec["where"].items():
                if name not in data.columns:
                    raise ConfigError(f"baseline 'where': no column {name!r}")
                mask &= (data[name] == value).to_numpy()
            if not mask.any():
                raise ConfigError(f"baseline 'where' {spec['where']} matches no row")
            row = data[mask].iloc[0].to_dict()
        else:
            number = int(spec.get("row", 1))
            if not 1 <= number <= len(data):
                raise ConfigError(
                    f"baseline row {number}: the file has {len(data)} rows"
                )
            row = data.iloc[number - 1].to_dict()
    elif "values" not in spec:
        raise ConfigError("baseline needs one of: values, median_of, row_of")
    row.update(spec.get("values", {}))

    if columns is not None:
        missing = [c.name for c in columns if c.name not in row]
        if missing:
            raise ConfigError(f"baseline has no value for {', '.join(missing)}")
        row = {c.name: row[c.name] for c in columns}
    return row


def axis(name: str, spec) -> np.ndarray:
    """The values of one varied feature: a list, or {start, stop, num|step}."""
    if isinstance(spec, list):
        values = np.asarray(spec, dtype=float)
    elif isinstance(spec, dict) and {"start", "stop"} <= spec.keys():
        if "step" in spec:
            values = np.arange(
                spec["start"], spec["stop"] + spec["step"] / 2, spec["step"]
            )
        else:
            values = np.linspace(spec["start"], spec["stop"], int(spec.get("num", 10)))
    else:
        raise ConfigError(
            f"grid {name!r}: give a list of values or {{start, stop, num}} (or step)"
        )
    if values.size == 0 or values.size > 10_000:
        raise ConfigError(f"grid {name!r}: {values.size} values (allowed: 1 to 10000)")
    return values


def scenarios(
    base: dict[str, object], grid: dict[str, object], columns: list[Column] | None
) -> pd.DataFrame:
    """Every combination of the grid's values, other features at the baseline."""
    if not 1 <= len(grid) <= 2:
        raise ConfigError(f"vary one or two features, not {len(grid)}")
    known = {c.name for c in columns} if columns is not None else set(base)
    for name in grid:
        if name not in known:
            raise ConfigError(
                f"grid feature {name!r} is not a model input; inputs: "
                f"{', '.join(sorted(known))}"
            )
    names = list(grid)
    axes = [axis(name, grid[name]) for name in names]
    combos = list(itertools.product(*axes))
    table = pd.DataFrame([base] * len(combos))
    for position, name in enumerate(names):
        table[name] = [combo[position] for combo in combos]
    table.insert(0, "scenario", range(1, len(table) + 1))
    return table


def plot(scored: pd.DataFrame, varied: list[str], path: Path, title: str) -> Path:
    """Save prediction against the varied feature(s) as a PNG."""
    # A bare Figure needs no pyplot and leaves the caller's backend alone (notebooks).
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=110)
    ax = figure.subplots()
    if len(varied) == 1:
        ax.plot(scored[varied[0]], scored["prediction"], marker="o")
    else:
        first, second = varied
        for value, group in scored.groupby(second):
            ax.plot(
                group[first],
                group["prediction"],
                marker=".",
                label=f"{second}={value:g}",
            )
        ax.legend(fontsize="small", ncols=2)
    ax.set_xlabel(varied[0])
    ax.set_ylabel("prediction")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path
