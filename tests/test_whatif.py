"""What-if tables: baselines, grids, and a scored scenario job."""

import json

import numpy as np
import pandas as pd
import pytest

from mlferry import jobs, whatif
from mlferry.errors import ConfigError
from mlferry.schema import Column

COLUMNS = [Column(n, "double") for n in ("age", "bmi", "bp")]


def test_scenarios_cross_two_axes_and_hold_the_rest_at_the_baseline():
    base = {"age": 50.0, "bmi": 25.0, "bp": 90.0}
    table = whatif.scenarios(
        base, {"bmi": {"start": 20, "stop": 30, "num": 3}, "bp": [80, 120]}, COLUMNS
    )
    assert len(table) == 6
    assert table["scenario"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (table["age"] == 50.0).all()
    assert sorted(set(table["bmi"])) == [20.0, 25.0, 30.0]
    assert sorted(set(table["bp"])) == [80.0, 120.0]


def test_axis_with_a_step_includes_the_stop():
    np.testing.assert_allclose(
        whatif.axis("bmi", {"start": 18, "stop": 22, "step": 2}), [18, 20, 22]
    )


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({}, r"vary one or two features, not 0"),
        ({"age": [1], "bmi": [1], "bp": [1]}, r"not 3"),
        ({"weight": [1]}, r"grid feature 'weight' is not a model input"),
        ({"bmi": "high"}, r"grid 'bmi': give a list"),
    ],
)
def test_scenarios_reject_bad_grids(grid, message):
    with pytest.raises(ConfigError, match=message):
        whatif.scenarios({"age": 1.0, "bmi": 1.0, "bp": 1.0}, grid, COLUMNS)


def test_baseline_forms(tmp_path):
    data = tmp_path / "d.csv"
    pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "age": [40.0, 50.0, 70.0],
            "bmi": [20.0, 30.0, 40.0],
            "bp": [80.0, 90.0, 100.0],
        }
    ).to_csv(data, index=False)
    median = whatif.baseline({"median_of": "d.csv"}, COLUMNS, tmp_path)
    assert median == {"age": 50.0, "bmi": 30.0, "bp": 90.0}
    row = whatif.baseline({"row_of": "d.csv", "row": 3}, COLUMNS, tmp_path)
    assert row["age"] == 70.0
    where = whatif.baseline(
        {"row_of": "d.csv", "where": {"id": "a"}}, COLUMNS, tmp_path
    )
    assert where["bmi"] == 20.0
    mixed = whatif.baseline(
        {"median_of": "d.csv", "values": {"age": 33}}, COLUMNS, tmp_path
    )
    assert mixed["age"] == 33
    with pytest.raises(ConfigError, match=r"baseline has no value for bmi, bp"):
        whatif.baseline({"values": {"age": 1}}, COLUMNS, tmp_path)
    with pytest.raises(ConfigError, match=r"baseline row 9: the file has 3 rows"):
        whatif.baseline({"row_of": "d.csv", "row": 9}, COLUMNS, tmp_path)


def test_whatif_job_scores_the_grid_and_saves_a_plot(
    settings_for, demo_version, history
):
    settings = settings_for(input_dir=history.parent)
    spec = jobs.load_spec(jobs_dir() / "diabetes-whatif.yaml")
    manifest = jobs.run(spec, settings)

    final = settings.output_dir / "diabetes-whatif" / "run=test"
    out = pd.read_parquet(final / "predictions.parquet")
    assert len(out) == manifest["rows_out"] == 12 * 6
    assert out["prediction"].nunique() > 1  # the grid moves the prediction
    assert (final / "whatif.png").read_bytes()[:4] == b"\x89PNG"
    recorded = json.loads((final / "manifest.json").read_text())
    assert set(recorded["whatif"]["grid"]) == {"bmi", "bp"}
    history_frame = pd.read_csv(history)
    assert recorded["whatif"]["baseline"]["age"] == history_frame["age"].median()


def jobs_dir():
    from conftest import ROOT

    return ROOT / "jobs"
