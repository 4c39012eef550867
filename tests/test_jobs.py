"""Job specs: the shipped ones are valid and portable; bad ones are refused clearly."""

import pytest
from conftest import ROOT

from mlferry import jobs
from mlferry.errors import ConfigError

SPECS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_the_project_ships_a_scoring_and_a_whatif_job():
    kinds = {("whatif" if jobs.load_spec(p).whatif else "score") for p in SPECS}
    assert kinds == {"score", "whatif"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_hold_no_machine_specific_paths(path):
    spec = jobs.load_spec(path)
    assert spec.name == path.stem
    for value in (spec.input, *(spec.whatif.baseline.values() if spec.whatif else ())):
        if isinstance(value, str):
            assert not value.startswith(("/", "~")), value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", r"exactly one of 'input' \(scoring\) or 'whatif'"),
        ("name: x\ninput: a.csv\ncolour: red\n", r"colour: Extra inputs"),
        ("name: ../x\ninput: a.csv\n", r"name: String should match"),
        ("name: x\ninput: a.csv\noutput: {format: xlsx}\n", r"output.format"),
        ("name: [unclosed\n", r"is not valid YAML"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        jobs.load_spec(path)


def test_missing_spec_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"job spec .*nope.yaml does not exist"):
        jobs.load_spec(tmp_path / "nope.yaml")
