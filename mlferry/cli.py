"""The `mlferry` command. Thin: parse flags, configure logging, call the package."""

import functools
import json
import logging
import re
import sys
from pathlib import Path

import click

from mlferry import __version__, logs
from mlferry.errors import MlferryError
from mlferry.settings import Settings, load_settings

log = logging.getLogger("mlferry.cli")


def _settings(ctx: click.Context, **flags) -> Settings:
    """Settings from env, with this command's and the group's flags on top."""
    merged = dict(ctx.obj or {})
    merged.update({key: value for key, value in flags.items() if value is not None})
    return load_settings(**merged)


def handled(command):
    """Print an MlferryError as one line and exit with its code, without a trace."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MlferryError as exc:
            log.error("%s", exc)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a path the user gave: not writable, not a folder
            log.error("%s: %s", exc.strerror or type(exc).__name__, exc.filename or exc)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="mlferry")
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR [MLFERRY_LOG_LEVEL].")
@click.option("--log-format", help="text or json [MLFERRY_LOG_FORMAT].")
@click.option(
    "--home", type=click.Path(path_type=Path), help="State folder [MLFERRY_HOME]."
)
@click.pass_context
def cli(ctx: click.Context, log_level, log_format, home) -> None:
    """Ferry a registered MLflow model into batch jobs and a model service.

    Every option also reads an environment variable, shown in brackets. With no
    MLFLOW_TRACKING_URI, commands use the embedded local registry.
    """
    ctx.obj = {"log_level": log_level, "log_format": log_format, "home": home}
    try:
        settings = load_settings(**ctx.obj)
    except MlferryError as exc:
        raise click.UsageError(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format)


# -- registry ---------------------------------------------------------------------


@cli.group()
def registry() -> None:
    """Run the embedded MLflow registry (state under MLFERRY_HOME/registry)."""


def _embedded(settings: Settings):
    from mlferry.embedded import EmbeddedRegistry

    return EmbeddedRegistry(
        settings.home / "registry", settings.registry_host, settings.registry_port
    )


@registry.command("start")
@click.option("--port", "registry_port", type=int, help="[MLFERRY_REGISTRY_PORT]")
@click.pass_context
@handled
def registry_start(ctx, registry_port) -> None:
    """Start the registry in the background (no-op if it already runs)."""
    embedded = _embedded(_settings(ctx, registry_port=registry_port))
    pid = embedded.start()
    click.echo(
        f"embedded registry at {embedded.url} (pid {pid}); stop: mlferry registry stop"
    )


@registry.command("stop")
@click.option("--port", "registry_port", type=int, help="[MLFERRY_REGISTRY_PORT]")
@click.pass_context
@handled
def registry_stop(ctx, registry_port) -> None:
    """Stop the registry that `registry start` started."""
    embedded = _embedded(_settings(ctx, registry_port=registry_port))
    stopped = embedded.stop()
    click.echo("stopped the embedded registry" if stopped else "it was not running")


@registry.command("status")
@click.option("--port", "registry_port", type=int, help="[MLFERRY_REGISTRY_PORT]")
@click.pass_context
def registry_status(ctx, registry_port) -> None:
    """Say whether the registry runs; exit 1 if it does not."""
    embedded = _embedded(_settings(ctx, registry_port=registry_port))
    if embedded.is_up():
        click.echo(f"running at {embedded.url} (pid {embedded.pid() or 'not ours'})")
    else:
        click.echo(f"not running ({embedded.url})")
        sys.exit(1)


# -- models -----------------------------------------------------------------------

model_uri_option = click.option(
    "--model-uri", help="models:/NAME@ALIAS, /STAGE or /VERSION [MLFERRY_MODEL_URI]."
)


@cli.command("train-demo")
@click.option("--name", default="diabetes", show_default=True)
@click.option("--alias", default="champion", show_default=True)
@click.pass_context
@handled
def train_demo(ctx, name, alias) -> None:
    """Train the demo model, register a new version and move the alias to it."""
    from mlferry import demo, registry

    registry.connect(_settings(ctx))
    version = demo.train_and_register(name, alias)
    click.echo(f"registered {name} version {version}; alias {alias} → {version}")


@cli.command("demo-data")
@click.option("--dest", type=click.Path(path_type=Path), help="[MLFERRY_INPUT_DIR]")
@click.pass_context
@handled
def demo_data(ctx, dest) -> None:
    """Write the demo's historical input table (diabetes patients) as CSV."""
    from mlferry import demo

    path = demo.write_history(dest or _settings(ctx).input_dir)
    click.echo(str(path))


@cli.command("demo-serve")
@click.option(
    "--job",
    type=click.Path(path_type=Path, exists=True),
    default=Path("jobs/diabetes-whatif.yaml"),
    show_default=True,
)
@click.pass_context
@handled
def demo_serve(ctx, job) -> None:
    """Serve the model, ask it the what-if grid with requests, compare with batch."""
    import numpy as np

    from mlferry import demo
    from mlferry.jobs import load_spec
    from mlferry.scoring import read_output

    settings = _settings(ctx)
    spec = load_spec(job)
    table = demo.service_round_trip(settings, job)
    click.echo(
        f"MLServer at {table.attrs['url']} answered as {table.attrs['model_name']} "
        f"version {table.attrs['model_version']} ({len(table)} scenarios); stopped."
    )
    varied = list(spec.whatif.grid)
    click.echo(
        table[[*varied, "v2", "invocations"]].head(8).round(2).to_string(index=False)
    )

    # The batch what-if job asked the same questions: the answers must agree.
    found = sorted(settings.output_dir.glob(f"{spec.name}/run=*/predictions.*"))
    if found:
        batch = read_output(found[-1])["prediction"].to_numpy()
        served = table["v2"].to_numpy()
        same = np.array_equal(batch, served) and np.array_equal(
            served, table["invocations"].to_numpy()
        )
        verdict = "yes" if same else "NO"
        click.echo(f"same answers as the batch what-if ({found[-1]}): {verdict}")
        if not same:
            sys.exit(1)


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="champion", show_default=True)
@click.pass_context
@handled
def promote(ctx, name, version, alias) -> None:
    """Point ALIAS of registered model NAME at VERSION."""
    from mlferry import demo, registry

    registry.connect(_settings(ctx))
    try:
        demo.promote(name, version, alias)
    except Exception as exc:  # MLflow's own error for an unknown version
        if isinstance(exc, MlferryError):
            raise
        raise MlferryError(
            f"cannot move {alias} of {name} to {version}: {exc}"
        ) from None
    click.echo(f"{name}@{alias} → version {version}")


@cli.command()
@model_uri_option
@click.pass_context
@handled
def resolve(ctx, model_uri) -> None:
    """Print the registry version a model URI resolves to, as JSON."""
    from mlferry import registry

    settings = _settings(ctx, model_uri=model_uri)
    registry.connect(settings)
    click.echo(json.dumps(registry.resolve(settings.model_uri).to_dict(), indent=2))


@cli.command()
@model_uri_option
@click.option("--dest", type=click.Path(path_type=Path), required=True)
@click.pass_context
@handled
def fetch(ctx, model_uri, dest) -> None:
    """Download the pinned version into DEST (an MLflow model folder + pin file)."""
    from mlferry import registry

    settings = _settings(ctx, model_uri=model_uri)
    registry.connect(settings)
    pinned = registry.resolve(settings.model_uri)
    registry.fetch(pinned, dest)
    click.echo(json.dumps(pinned.to_dict(), indent=2))


# -- batch ------------------------------------------------------------------------


def _batch_options(command):
    options = [
        model_uri_option,
        click.option(
            "--model-dir",
            type=click.Path(path_type=Path),
            help="Local pinned model folder; no registry [MLFERRY_MODEL_DIR].",
        ),
        click.option(
            "--input-dir",
            type=click.Path(path_type=Path),
            help="Base of relative input paths [MLFERRY_INPUT_DIR].",
        ),
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path),
            help="Where outputs go [MLFERRY_OUTPUT_DIR].",
        ),
        click.option(
            "--run-key", help="Output partition (default today) [MLFERRY_RUN_KEY]."
        ),
        click.option(
            "--chunk-rows", type=int, help="Rows per chunk [MLFERRY_CHUNK_ROWS]."
        ),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["parquet", "csv"]),
            help="Output format (default: the job's, else parquet).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _report(manifest: dict) -> None:
    """Print where the output is and a few rows of it."""
    from mlferry.scoring import read_output

    path = Path(manifest["output"]["path"])
    model = manifest["model"]
    click.echo(
        f"{manifest['rows_out']} rows scored by {model['name']} version "
        f"{model['version']} → {path}"
    )
    if manifest["rows_out"]:
        import pandas as pd

        with pd.option_context("display.width", 120, "display.max_columns", 14):
            click.echo(read_output(path).head(5).round(2).to_string(index=False))


@cli.command()
@click.option("--job", type=click.Path(path_type=Path), help="Job spec (YAML).")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path),
    help="Input CSV/Parquet (overrides the job's).",
)
@click.option("--name", help="Output folder name when no --job is given.")
@_batch_options
@click.pass_context
@handled
def score(ctx, job, input_path, name, output_format, **flags) -> None:
    """Score a CSV/Parquet file, or run a job spec (scoring or what-if)."""
    from mlferry import jobs

    settings = _settings(ctx, **flags)
    if job:
        spec = jobs.load_spec(job)
    elif input_path:
        default = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(input_path).stem).strip("-.")
        try:
            spec = jobs.JobSpec(name=name or default or "scores", input=str(input_path))
        except ValueError as exc:
            raise click.BadParameter(
                str(exc).splitlines()[-1], param_hint="--name"
            ) from None
    else:
        raise click.UsageError("give --job SPEC or --input FILE")
    manifest = jobs.run(
        spec, settings, input_path=input_path, output_format=output_format
    )
    _report(manifest)


@cli.command()
@click.option("--job", type=click.Path(path_type=Path), help="What-if job spec (YAML).")
@click.option(
    "--baseline",
    "baseline_of",
    type=click.Path(path_type=Path),
    help="Data file whose medians are the baseline.",
)
@click.option(
    "--vary",
    multiple=True,
    metavar="FEATURE=START:STOP:NUM",
    help="A feature to vary (once or twice), e.g. bmi=18:40:12.",
)
@click.option(
    "--set",
    "fixed",
    multiple=True,
    metavar="FEATURE=VALUE",
    help="Fix a baseline feature, e.g. age=50.",
)
@click.option("--name", default="whatif", show_default=True)
@click.option("--no-plot", is_flag=True, help="Skip the PNG plot.")
@_batch_options
@click.pass_context
@handled
def whatif(ctx, job, baseline_of, vary, fixed, name, no_plot, output_format, **flags):
    """Score a what-if grid: one or two features varied around a baseline."""
    from mlferry import jobs

    settings = _settings(ctx, **flags)
    if job:
        spec = jobs.load_spec(job)
    else:
        grid = {}
        for item in vary:
            feature, _, spec_text = item.partition("=")
            try:
                start, stop, num = spec_text.split(":")
                grid[feature] = {
                    "start": float(start),
                    "stop": float(stop),
                    "num": int(num),
                }
            except ValueError:
                raise click.BadParameter(
                    f"{item!r}: expected FEATURE=START:STOP:NUM", param_hint="--vary"
                ) from None
        values = {}
        for item in fixed:
            feature, _, value = item.partition("=")
            try:
                values[feature] = float(value)
            except ValueError:
                raise click.BadParameter(
                    f"{item!r}: expected FEATURE=NUMBER", param_hint="--set"
                ) from None
        base = {"values": values}
        if baseline_of:
            base["median_of"] = str(Path(baseline_of).resolve())
        spec = jobs.JobSpec(
            name=name, whatif={"baseline": base, "grid": grid, "plot": not no_plot}
        )
    manifest = jobs.run(spec, settings, output_format=output_format)
    _report(manifest)


# -- service ----------------------------------------------------------------------


@cli.command()
@model_uri_option
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    help="Local pinned model folder; no registry [MLFERRY_MODEL_DIR].",
)
@click.option("--host", help="Listen address [MLFERRY_HOST].")
@click.option("--http-port", type=int, help="[MLFERRY_HTTP_PORT]")
@click.option("--grpc-port", type=int, help="[MLFERRY_GRPC_PORT]")
@click.option("--metrics-port", type=int, help="[MLFERRY_METRICS_PORT]")
@click.option(
    "--workers", type=int, help="Inference worker processes [MLFERRY_WORKERS]."
)
@click.option(
    "--scratch-dir",
    type=click.Path(path_type=Path),
    help="Writable folder for server files [MLFERRY_SCRATCH_DIR].",
)
@click.pass_context
@handled
def serve(ctx, **flags) -> None:
    """Serve the model with MLServer (V2 and /invocations) until stopped."""
    from mlferry import serving

    settings = _settings(ctx, **flags)
    config = serving.prepare(settings)
    sys.exit(serving.serve_forever(config))


@cli.command()
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="CSV or Parquet rows to send.",
)
@click.option("--url", default="http://127.0.0.1:8080", show_default=True)
@click.option("--model", "model_name", default="diabetes", show_default=True)
@click.option(
    "--protocol",
    type=click.Choice(["v2", "invocations"]),
    default="v2",
    show_default=True,
)
@click.option("--timeout", type=float, default=10.0, show_default=True)
@handled
def predict(input_path, url, model_name, protocol, timeout) -> None:
    """Send rows to a running model service and print the predictions."""
    import pandas as pd

    from mlferry.client import ModelClient
    from mlferry.sources import format_of

    frame = (
        pd.read_parquet(input_path)
        if format_of(input_path) == "parquet"
        else pd.read_csv(input_path)
    )
    client = ModelClient(url, model_name, timeout=timeout)
    if protocol == "v2":
        result = client.infer(frame)
        predictions, answered = result.frame, f"version {result.model_version}"
    else:
        predictions, answered = client.invocations(frame), "/invocations"
    shown = pd.concat([frame.reset_index(drop=True), predictions], axis=1)
    click.echo(f"{len(shown)} predictions from {model_name} ({answered}) at {url}")
    click.echo(shown.round(3).to_string(index=False))


def main() -> None:
    """Entry point of the `mlferry` console script."""
    cli(auto_envvar_prefix=None)


if __name__ == "__main__":
    main()
