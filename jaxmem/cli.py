"""The ``jaxmem`` command line.

Exit codes: 0 done (rows may still carry ``status: error``), 2 bad input (one line on stderr
naming the field, nothing written), 1 internal failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from jaxmem import _platform, report, results, targets
from jaxmem.build import build_program
from jaxmem.cache import default_dir as default_cache_dir
from jaxmem.charts import plot
from jaxmem.config import MODES
from jaxmem.distributed import Cluster, is_process_zero
from jaxmem.errors import ConfigError, check_choice
from jaxmem.estimate import estimate
from jaxmem.experiment import Experiment, GridPoint
from jaxmem.explain import explain_program
from jaxmem.explain_view import plot as explain_plot
from jaxmem.explain_view import write_text as explain_text
from jaxmem.failures import classify, one_line_error
from jaxmem.fit import fit, fit_text
from jaxmem.html_report import write as write_report
from jaxmem.plan import OBJECTIVES, plan, plan_rows, plan_summary
from jaxmem.pool import usable_cores
from jaxmem.residuals import residual_report
from jaxmem.runner import prepare
from jaxmem.runner import run as run_experiment
from jaxmem.setup import resolve
from jaxmem.units import parse_bytes


def _fail(message: str, code: int) -> None:
    click.echo(f"jaxmem: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Click's own usage errors as one line on stderr, exit 2, like jaxmem's."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.ClickException as e:
            _fail(e.format_message().replace("\n", " "), 2)
        except click.exceptions.Abort:  # Ctrl-C in explain, residuals, ...: no teardown, as
            sys.stdout.flush()  # the interpreter's can crash while XLA's threads still run
            sys.stderr.flush()
            os._exit(130)
        if isinstance(rv, int):  # --help / --version ask click to exit
            sys.exit(rv)
        return rv


def _interrupted(out: Path) -> None:
    """Ctrl-C: the finished rows are on disk; exit 130 without the interpreter's teardown (it
    can crash while XLA's threads still run)."""
    try:
        kept = len(results.read(out)) if (out / results.JSONL).exists() else 0
    except (OSError, ValueError):
        kept = 0
    click.echo(f"jaxmem: interrupted: {kept} finished configuration(s) kept in "
               f"{out / results.JSONL}; --resume measures the rest", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("jaxmem"), prog_name="jaxmem")
def cli() -> None:
    """Measure and plan JAX/XLA training memory before you rent the hardware."""
    _platform.apply()  # no TPU chips here: keep libtpu from starting (and printing errors)


def _table_options(fn):
    """``--wide`` and ``--columns``: how the results table meets the terminal."""
    fn = click.option("--columns", default=None, metavar="H1,H2,...",
                      help="Only these columns, in this order (headers as printed, e.g. "
                           "total/dev,temp/dev,fits).")(fn)
    return click.option("--wide", is_flag=True,
                        help="Every column, however wide (by default columns are left out, "
                             "least important first, to fit the terminal).")(fn)


def _print_results(records: list, title: str, wide: bool, columns: str | None) -> None:
    try:
        report.print_table(records, title=title, wide=wide,
                           columns=[c.strip() for c in columns.split(",")] if columns else None)
    except ConfigError as e:
        _fail(str(e), 2)


def _budget(text: str | None) -> int | None:
    """``--budget`` in bytes (exit 2 for a size that is not one)."""
    try:
        return None if text is None else parse_bytes(text)
    except ValueError as e:
        _fail(f"--budget: {e}", 2)


def _failure_line(name: str, err: Exception, as_json: bool, console: Console) -> None:
    """A configuration that failed: its line (a JSON object with ``--json``)."""
    failure = classify(err)
    if as_json:
        click.echo(json.dumps({"name": name, "status": failure.status, "error": failure.error}))
    else:
        console.print(f"{name}: {failure.status}: {failure.error}", highlight=False,
                      markup=False)


def _default_workers() -> int:
    env = os.environ.get("JAXMEM_WORKERS")
    return int(env) if env and env.isdigit() else usable_cores()


@cli.command("run")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set model.num_layers=8 or remat=full. "
                   "Pins the field if it is swept; sweep.KEY=[a,b] replaces a sweep.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for results.jsonl and results.csv (default: runs/<experiment>).")
@click.option("--mode", default=None, metavar="compile|run",
              help="compile: XLA analysis on abstract shapes (default); run: real arrays in "
                   "a subprocess per configuration.")
@click.option("--workers", type=click.IntRange(0, 1024), default=None,
              help="Compile mode: worker processes (default: the usable cores, or "
                   "$JAXMEM_WORKERS); 0 compiles in this process, without timeouts.")
@click.option("--resume", is_flag=True,
              help="Keep --out's rows and measure only the configurations without one.")
@click.option("--force", is_flag=True, help="Replace the rows already in --out.")
@click.option("--cache/--no-cache", default=lambda: os.environ.get("JAXMEM_CACHE") != "0",
              help="JAX's persistent compilation cache, where it applies (local and cpu "
                   "targets); on unless $JAXMEM_CACHE=0.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the cache (default: $JAXMEM_CACHE_DIR or ~/.cache/jaxmem/xla).")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--distributed", is_flag=True,
              help="One of several processes (hosts) measuring together: "
                   "jax.distributed.initialize() detects the cluster (TPU VM, SLURM, ...) "
                   "unless the three options below say it.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Process 0's address (implies --distributed).")
@click.option("--num-processes", type=int, default=None, help="Processes in the system.")
@click.option("--process-id", type=int, default=None, help="This process's index.")
@_table_options
def run_cmd(experiment: Path, overrides: tuple[str, ...], out: Path | None, mode: str | None,
            workers: int | None, resume: bool, force: bool, cache: bool,
            cache_dir: Path | None, progress: bool, distributed: bool,
            coordinator: str | None, num_processes: int | None,
            process_id: int | None, wide: bool, columns: str | None) -> None:
    """Measure every configuration of EXPERIMENT (a YAML file) and print the table."""
    cluster = None
    try:
        if mode is not None:
            check_choice("--mode", mode, MODES, what="mode")
        if resume and force:
            raise ConfigError("--resume", "and --force contradict each other; choose one")
        exp = Experiment.from_yaml(experiment, overrides)
        if distributed or None not in (coordinator, num_processes, process_id):
            cluster = Cluster(coordinator, num_processes, process_id)
        elif (coordinator, num_processes, process_id) != (None, None, None):
            raise ConfigError("--coordinator", "give --coordinator, --num-processes and "
                              "--process-id together, or --distributed to detect them")
        modes = {mode or p.config.measure.mode for p in exp.grid()}
        if cluster is not None and "run" in modes and not cluster.explicit:
            raise ConfigError("--coordinator", "run mode across processes needs "
                              "--coordinator, --num-processes and --process-id")
        out = out or Path("runs") / exp.name
        results.check_out(out)
    except ConfigError as e:
        _fail(str(e), 2)
    if workers is None:
        workers = 0 if cluster is not None else _default_workers()
    if cluster is not None and "compile" in modes:
        try:
            cluster.initialize()  # before anything asks for devices
        except Exception as e:  # nothing to join: not a cluster, or the coordinator is away
            _fail(f"--distributed: could not join a distributed system ({one_line_error(e)})",
                  2)
    try:
        records = run_experiment(
            exp, mode, out=out, progress=progress, cluster=cluster, workers=workers,
            resume=resume, force=force,
            cache_dir=(cache_dir or default_cache_dir()) if cache else None)
    except ConfigError as e:  # e.g. a mesh larger than the target, --out taken
        _fail(str(e), 2)
    except KeyboardInterrupt:
        _interrupted(out)
    except Exception:
        traceback.print_exc()
        _fail("internal failure (traceback above)", 1)
    if cluster is not None and not is_process_zero(cluster):
        click.echo(f"{exp.name}: {len(records)} configurations measured; process 0 writes "
                   "the results")
        return
    _print_results(records, f"{exp.name}: {len(records)} configurations", wide, columns)
    failed = [r for r in records if not r.ok]
    # one path per line, never wrapped by the console
    click.echo(f"results: {out / results.JSONL}\n         {out / results.CSV}", err=True)
    if failed:
        Console(stderr=True).print(f"[red]{len(failed)} configuration(s) failed[/red]",
                                   highlight=False)


@cli.command("residuals")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, as for run.")
def residuals_cmd(experiment: Path, overrides: tuple[str, ...]) -> None:
    """Print what each configuration keeps for the backward pass (from the jaxpr)."""
    try:
        exp = Experiment.from_yaml(experiment, overrides)
        points = exp.grid()
        for point in points:
            if point.config.task != "train":
                raise ConfigError("task", "has no backward pass, so nothing is kept for one; "
                                  "residuals apply to task train", value=point.config.task)
        setups = prepare(points, "compile")
    except ConfigError as e:
        _fail(str(e), 2)
    console = report.wide_console()
    for point, setup in zip(points, setups, strict=True):
        residuals, note = residual_report(setup)
        console.print(report.residual_table(residuals, title=f"{exp.name}: {point.name}",
                                            note=note))


#: buffers kept in the explanation JSON beside each timeline PNG (totals count them all)
EXPLAIN_KEPT = 50


@cli.command("explain")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, as for run.")
@click.option("--top", type=click.IntRange(1, 10_000), default=15, show_default=True,
              help="Buffers to list, largest first (the totals count them all).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per configuration on stdout.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the timeline PNGs and JSON that `jaxmem report` shows "
                   "(default: runs/<experiment>/explain).")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="Write each configuration's timeline as a PNG and its explanation as JSON "
                   "(the largest buffers) into --out.")
def explain_cmd(experiment: Path, overrides: tuple[str, ...], top: int, as_json: bool,
                out: Path | None, plot: bool) -> None:
    """Show what is live at each configuration's peak, per device, and where it comes from."""
    try:
        exp = Experiment.from_yaml(experiment, overrides)
        points = exp.grid()
        setups = prepare(points, "compile")
        folder = out if out is not None else Path("runs") / exp.name / "explain"
        if plot:
            results.check_out(folder)
    except ConfigError as e:
        _fail(str(e), 2)
    console = report.wide_console()
    for point, setup in zip(points, setups, strict=True):
        try:
            e = explain_program(build_program(setup), point.name)
        except Exception as err:  # noqa: BLE001 - a configuration that fails is its line
            _failure_line(point.name, err, as_json, console)
            continue
        png = None
        if plot:
            folder.mkdir(parents=True, exist_ok=True)
            png = explain_plot(e, folder / f"{point.name}.png")
            results.replace_text(folder / f"{point.name}.json", json.dumps(
                {"status": "ok", **e.to_dict(EXPLAIN_KEPT), "timeline_png": png.name}))
        if as_json:
            click.echo(json.dumps({"status": "ok", **e.to_dict(top),
                                   "timeline_png": str(png) if png else None}))
        else:
            console.print(explain_text(e, top), highlight=False, markup=False)
            if png:
                console.print(f"  timeline: {png}", highlight=False, markup=False)


@cli.command("estimate")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, as for run.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per configuration on stdout.")
def estimate_cmd(experiment: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Estimate each configuration's memory per device from shapes, without compiling."""
    try:
        exp = Experiment.from_yaml(experiment, overrides)
        points = exp.grid()
        setups = [resolve(p.config) for p in points]
        targets.ensure_cpu_devices(s.target for s in setups)
        for setup in setups:
            setup.check("compile", devices=False, user_code=False)
        rows: list[tuple[str, Any]] = []
        for point, setup in zip(points, setups, strict=True):
            try:
                rows.append((point.name, estimate(setup, point.name)))
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001 - a configuration that fails is its row
                failure = classify(e)
                rows.append((point.name, f"{failure.status}: {failure.error}"))
    except ConfigError as e:
        _fail(str(e), 2)
    if as_json:
        for name, e in rows:
            if isinstance(e, str):
                status, _, error = e.partition(": ")
                click.echo(json.dumps({"name": name, "status": status, "error": error}))
            else:
                click.echo(json.dumps({"status": "ok", **e.to_dict()}))
        return
    report.wide_console().print(report.estimate_table(rows, title=exp.name))


@cli.command("fit")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--vary", "field", default="data.batch_size", show_default=True,
              help="The integer field to maximise (data.batch_size, model.seq_len, ...).")
@click.option("--budget", default=None, metavar="SIZE",
              help="Memory per device to fit in (14GiB, 512MiB; default: the target's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, as for run.")
@click.option("--check-below/--no-check-below", default=False, show_default=True,
              help="Compile the value just below the answer too, to say whether the fitting "
                   "values below it are an interval (one more compile; the answer is the "
                   "same either way).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per configuration on stdout.")
def fit_cmd(experiment: Path, field: str, budget: str | None, overrides: tuple[str, ...],
            check_below: bool, as_json: bool) -> None:
    """Find the largest value of an integer field that fits, verified by compile."""
    budget_bytes = _budget(budget)
    try:
        exp = Experiment.from_yaml(experiment, overrides)
        points = exp.grid()
        setups = prepare(points, "compile")
    except ConfigError as e:
        _fail(str(e), 2)
    console = report.wide_console()
    for point, setup in zip(points, setups, strict=True):
        try:
            result = fit(setup.config, field, budget_bytes, check_below=check_below)
        except ConfigError as e:
            _fail(str(e), 2)
        except Exception as err:  # noqa: BLE001 - a configuration that fails is its line
            _failure_line(point.name, err, as_json, console)
            continue
        if as_json:
            click.echo(json.dumps({"name": point.name, "status": "ok", **result.to_dict()}))
        else:
            console.print(fit_text(point.name, result), highlight=False, markup=False)


@cli.command("plan")
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--budget", default=None, metavar="SIZE",
              help="Memory per device to fit in (16GiB; default: the target's).")
@click.option("--target", default=None, metavar="NAME",
              help="Plan for this target (target.name, e.g. tpu:v5e:16x16).")
@click.option("--objective", type=click.Choice(sorted(OBJECTIVES)), default="throughput",
              show_default=True, help="What the ranking minimises: estimated seconds per "
              "example, or bytes per device.")
@click.option("--vary", default=None, metavar="FIELD",
              help="Take each candidate at the largest value of this integer field that "
                   "fits (data.batch_size); the chosen one's is found by compile.")
@click.option("--verify", type=click.IntRange(0, 100), default=None,
              help="Compiles allowed to verify the best candidates (default: the "
                   "experiment's plan.verify, 2).")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Candidates shown.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, as for run.")
@click.option("--json", "as_json", is_flag=True,
              help="The ranked candidates as a JSON list on stdout.")
def plan_cmd(experiment: Path, budget: str | None, target: str | None, objective: str,
             vary: str | None, verify: int | None, top: int, overrides: tuple[str, ...],
             as_json: bool) -> None:
    """Find the cheapest configuration that fits, verified by compile."""
    budget_bytes = _budget(budget)
    sets = (*overrides, *((f"target={target}",) if target else ()))
    try:
        exp = Experiment.from_yaml(experiment, sets)
        space = exp.plan if verify is None else dataclasses.replace(exp.plan, verify=verify)
        setup = prepare([GridPoint(0, "base", exp.config)], "compile")[0]
        result = plan(setup.config, budget_bytes, space=space, objective=objective, vary=vary)
    except ConfigError as e:
        _fail(str(e), 2)
    if as_json:
        click.echo(json.dumps([
            {"rank": i, **c.to_dict()} for i, c in enumerate(result.ranked)]
            + ([{"rank": None, "baseline": True, **result.baseline.to_dict()}]
               if result.baseline is not None else [])))
        return
    if exp.sweep:
        click.echo(f"{exp.name}: plans the base configuration; the sweep is not used", err=True)
    console = report.wide_console()
    console.print(report.plan_table(plan_rows(result, top), title=f"{exp.name}: plan",
                                    caption=plan_summary(result)))
    if result.chosen is not None:
        line = " ".join(f"--set {x}" for x in result.chosen.changes
                        + ((f"{vary}={result.chosen.value}",) if vary else ()))
        console.print(f"use it: jaxmem run {experiment} {line}".rstrip(), highlight=False,
                      markup=False, soft_wrap=True)


@cli.command("plot")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--x", "x", required=True, metavar="FIELD",
              help="Field on the horizontal axis (config.data.batch_size, ...).")
@click.option("--y", "y", default="compiled.total_bytes", show_default=True, metavar="FIELD",
              help="Field on the vertical axis.")
@click.option("--by", default=None, metavar="FIELD",
              help="One line (or bar colour) per value of this field (config.remat.policy).")
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=None,
              help="The PNG to write (default: <y>_vs_<x>.png in the results folder).")
def plot_cmd(results_path: Path, x: str, y: str, by: str | None, out: Path | None) -> None:
    """Draw one field of an earlier run against another, as a PNG."""
    try:
        path = plot(results_path, x, y, by=by, out=out)
    except ConfigError as e:
        _fail(str(e), 2)
    except (OSError, ValueError) as e:
        _fail(f"{results_path}: cannot read results ({e})", 2)
    except ImportError as e:
        _fail(str(e), 2)
    click.echo(str(path))


@cli.command("report")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write (default: report.html in the results folder).")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of `jaxmem explain` output to include (default: RESULTS/explain).")
def report_cmd(results_path: Path, out: Path | None, explain_dir: Path | None) -> None:
    """Write an earlier run as one self-contained HTML page (charts, table, notes)."""
    try:
        path = write_report(results_path, out, explain_dir=explain_dir)
    except ValueError as e:
        _fail(f"{results_path}: not results that jaxmem run wrote: {e}", 2)
    except OSError as e:
        _fail(f"{e.filename or results_path}: cannot read or write ({e.strerror or e})", 2)
    except ImportError as e:
        _fail(str(e), 2)
    click.echo(str(path))


@cli.command("targets")
def targets_cmd() -> None:
    """List the targets to compile for, with the memory of one device."""
    report.wide_console().print(report.targets_table(targets.catalogue()))


@cli.command("show")
@click.argument("results_path", metavar="RESULTS", type=click.Path(path_type=Path))
@_table_options
def show_cmd(results_path: Path, wide: bool, columns: str | None) -> None:
    """Print the table of an earlier run (a results folder or results.jsonl)."""
    try:
        records = results.read(results_path)
    except OSError as e:
        _fail(f"{results_path}: cannot read results ({e.strerror or type(e).__name__})", 2)
    except ValueError as e:
        _fail(f"{results_path}: not results that jaxmem run wrote: {e}", 2)
    _print_results(records, str(results_path), wide, columns)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
