"""Batch job specs: one YAML file per job, the same for every scheduler.

A spec names the model, the input (or a what-if scenario) and the output format.
It holds no machine-specific paths: relative paths are taken from
`MLFERRY_INPUT_DIR` / `MLFERRY_OUTPUT_DIR`, and env vars or flags override the
model URI and the input.
"""

import logging
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlferry import whatif
from mlferry.errors import ConfigError
from mlferry.scoring import load_model, read_output, score
from mlferry.settings import Settings
from mlferry.sources import FileSource, FrameSource

log = logging.getLogger(__name__)


class WhatIf(BaseModel):
    """A scenario table: a baseline row and a grid over one or two features."""

    model_config = ConfigDict(extra="forbid")
    baseline: dict
    grid: dict[str, list[float] | dict[str, float]]
    plot: bool = True


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["parquet", "csv"] = "parquet"


class JobSpec(BaseModel):
    """One batch job."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    model: str | None = None
    input: str | None = None
    whatif: WhatIf | None = None
    output: Output = Output()

    @model_validator(mode="after")
    def _one_kind(self) -> "JobSpec":
        if (self.input is None) == (self.whatif is None):
            raise ValueError("give exactly one of 'input' (scoring) or 'whatif'")
        return self


def load_spec(path: Path) -> JobSpec:
    """Read and check a job spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"job spec {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"job spec {path} is not valid YAML: {exc}") from None
    try:
        return JobSpec.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"job spec {path}: {problems}") from None


def run(
    spec: JobSpec,
    settings: Settings,
    *,
    input_path: Path | None = None,
    output_format: str | None = None,
) -> dict:
    """Run a job spec, flags and env overriding its model and input."""
    model = load_model(settings, spec.model)
    fmt = output_format or spec.output.format
    common = {
        "job": spec.name,
        "output_dir": settings.output_dir,
        "run_key": settings.run_key,
        "output_format": fmt,
        "workers": settings.score_workers,
    }
    if spec.whatif is None:
        path = Path(input_path or spec.input)
        if not path.is_absolute() and input_path is None:
            path = settings.input_dir / path
        source = FileSource(path, settings.chunk_rows)
        return score(model, source, **common)

    base = whatif.baseline(spec.whatif.baseline, model.columns, settings.input_dir)
    table = whatif.scenarios(base, spec.whatif.grid, model.columns)
    varied = list(spec.whatif.grid)
    log.info(
        "what-if %s: %d scenarios varying %s around %s",
        spec.name,
        len(table),
        " × ".join(varied),
        base,
    )
    source = FrameSource(table, settings.chunk_rows, f"what-if grid over {varied}")

    def add_plot(staging: Path) -> None:
        if not spec.whatif.plot:
            return
        scored = read_output(staging / f"predictions.{fmt}")
        whatif.plot(
            scored,
            varied,
            staging / "whatif.png",
            f"{model.pinned.name} v{model.pinned.version}: "
            f"prediction vs {' × '.join(varied)}",
        )

    return score(
        model,
        source,
        **common,
        extra_manifest={"whatif": {"baseline": base, "grid": spec.whatif.grid}},
        before_commit=add_plot,
    )
