"""``python -m hblogit.check``: hblogit against PyMC on the user's own data.

    python -m hblogit.check --data visits.parquet --outcome bought --group shop
    python -m hblogit.check --preset seed                  # the post's 1M x 100k x 20 problem
    python -m hblogit.check --preset small --mode posterior

``gradient`` mode (the default) builds the same model in PyMC (``reference.model``) and compares
the log-density and its gradient at random points, some drawn near the prior and some near the
posterior mode, in float64 and in float32. ``posterior`` mode samples with ``hblogit.fit`` and
with PyMC and compares the posterior means of the global parameters against their Monte Carlo
standard errors. Each mode prints a table, writes it to ``--out`` as CSV and markdown, and exits
0 when everything agrees, 1 when something does not (naming it), 2 on bad input.

PyMC is an optional dependency (``pip install 'hblogit[reference]'``). Importing it switches on
JAX's x64 mode, which this module needs anyway for its float64 comparison.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import hblogit
from hblogit import runner
from hblogit.cli import add_data_arguments, cli_errors, load_data
from hblogit.data import Dataset
from hblogit.model import Params

INSTALL_REFERENCE = "pip install 'hblogit[reference]'"


class Tolerance(NamedTuple):
    value: float  # |ours - PyMC| / |PyMC| of the log-density
    gradient: float  # max |ours - PyMC| over a block / max |PyMC| over the whole gradient


# float32: a sum of N float32 terms carries a relative rounding error between sqrt(N) * 2**-24
# (pairwise) and N * 2**-24 (sequential), and the two implementations order their sums
# differently. On the seed preset (N = 1M; experiments/RESULTS.md) the worst value error is
# 6.4e-8 and the worst gradient error 2.9e-6 (log_sigma_alpha, near the mode): the tolerances
# leave 150x and 340x of headroom, for larger data, and stay far below what a wrong term
# costs (beta ~ Normal(0, 2) instead of Normal(0, 1) is a 1e-2 value and 8e-2 gradient error
# on tests/test_check.py's data).
TOLERANCES = {
    "float64": Tolerance(value=1e-10, gradient=1e-8),
    "float32": Tolerance(value=1e-5, gradient=1e-3),
}

# Posterior mode samples the full model twice: above these sizes that takes hours on a CPU.
POSTERIOR_MAX_CELLS = 2_000_000  # N * K
POSTERIOR_MAX_GROUPS = 20_000
POSTERIOR_MAX_ABS_Z = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hblogit.check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_arguments(parser)
    parser.add_argument("--mode", choices=["gradient", "posterior"], default="gradient")
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help="where to write the tables (default runs/check-<timestamp>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the points or the samplers")
    gradient = parser.add_argument_group("gradient mode")
    gradient.add_argument(
        "--points", type=_positive_int, default=5, help="points compared (half near the prior, half near the mode)"
    )
    gradient.add_argument("--adam-steps", type=_positive_int, default=300, help="Adam steps towards the posterior mode")
    posterior = parser.add_argument_group("posterior mode")
    posterior.add_argument("--sampler", default="nuts", help="hblogit sampler name")
    posterior.add_argument("--chains", type=_positive_int, default=4)
    posterior.add_argument("--warmup", type=_positive_int, default=1000)
    posterior.add_argument("--draws", type=_positive_int, default=1000)
    posterior.add_argument(
        "--force",
        action="store_true",
        help=f"sample data larger than N*K = {POSTERIOR_MAX_CELLS:,} or G = {POSTERIOR_MAX_GROUPS:,}",
    )
    return parser.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


@cli_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import pymc  # noqa: F401  (also switches on JAX x64)
    except ImportError:
        message = f"error: hblogit.check compares against PyMC, which is not installed: {INSTALL_REFERENCE}"
        print(message, file=sys.stderr)
        return 2
    jax.config.update("jax_enable_x64", True)
    loaded = load_data(args, default_preset="small")
    progress(f"data: {loaded.description}")
    if args.mode == "gradient":
        tables, failures = gradient_check(loaded.dataset, args.points, args.seed, args.adam_steps)
    else:
        tables, failures = posterior_check(loaded.dataset, args)
    out = args.out or Path("runs") / f"check-{datetime.now():%Y%m%d-%H%M%S}"
    markdown = write_tables(tables, out, title=f"hblogit.check --mode {args.mode}: {loaded.description}")
    print(markdown)
    print(f"written to {out}/")
    if failures:
        print(f"FAIL: {'; '.join(failures)}")
        return 1
    print("PASS")
    return 0


def progress(message: str) -> None:
    """Stages on stderr, so that a run of minutes shows where it is; the table goes to stdout."""
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- gradient mode


def gradient_check(dataset: Dataset, num_points: int, seed: int, adam_steps: int):
    """The error and timing tables, and a description of each comparison out of tolerance."""
    progress(f"drawing {num_points} points ({adam_steps} Adam steps towards the mode)")
    points = check_points(dataset, num_points, seed, adam_steps)
    error_rows, timing_rows = [], []
    for precision, tolerance in TOLERANCES.items():
        progress(f"{precision}: building both implementations and comparing")
        data = dataset.astype(precision)
        cast = [(label, jax.tree.map(lambda x: x.astype(precision), p)) for label, p in points]
        implementations = {"hblogit": hblogit_implementation(data), "PyMC": pymc_implementation(data, precision)}
        comparison = compare_at_points(implementations, cast)
        error_rows += error_table_rows(precision, tolerance, comparison)
        timing_rows += [
            dict(precision=precision, implementation=name, median_ms=1e3 * seconds)
            for name, seconds in comparison.median_seconds.items()
        ]
    errors = pd.DataFrame(error_rows)
    failures = [
        f"{precision} {', '.join(group.quantity)}"
        for precision, group in errors[~errors.ok].groupby("precision", sort=False)
    ]
    notes = (
        f"{len(points)} points: {', '.join(label for label, _ in points)}. "
        "Gradient relative error = max |hblogit - PyMC| over the block (or the whole gradient) "
        "/ max |PyMC| over the whole gradient, so that near-zero entries do not inflate it."
    )
    timing_notes = "median of one value-and-gradient call per point, after a warm-up call"
    return [("errors", errors, notes), ("timing", pd.DataFrame(timing_rows), timing_notes)], failures


def check_points(dataset: Dataset, num_points: int, seed: int, adam_steps: int) -> list[tuple[str, Params]]:
    """Float64 points: the first half uniform on (-1, 1) (near the prior), the rest near the mode.

    The mode is found once, by Adam from the first prior point; each point near it is the mode
    plus a uniform (-0.05, 0.05) perturbation, so that the points differ.
    """
    keys = jax.random.split(jax.random.key(seed), num_points)
    num_prior = math.ceil(num_points / 2)
    points = [
        (f"prior-{i}", hblogit.init_params(key, dataset, radius=1.0, dtype=jnp.float64))
        for i, key in enumerate(keys[:num_prior])
    ]
    if num_points > num_prior:
        mode = posterior_mode(dataset, points[0][1], adam_steps)
        for i, key in enumerate(keys[num_prior:]):
            perturbation = hblogit.init_params(key, dataset, radius=0.05, dtype=jnp.float64)
            points.append((f"mode-{i}", jax.tree.map(jnp.add, mode, perturbation)))
    return points


def posterior_mode(dataset: Dataset, start: Params, steps: int, learning_rate: float = 0.05) -> Params:
    """Adam on -logdensity (the runner's own descent, for one point): a far higher density and
    a far smaller gradient than at prior points, where a relative error of the gradient is
    hardest to keep small."""
    batch = jax.tree.map(lambda x: x[None], start)
    modes = runner.descend(batch, hblogit.make_logdensity(dataset), steps, learning_rate)
    return jax.tree.map(lambda x: x[0], modes)


class Implementation(NamedTuple):
    """``call(params)`` is what is timed; ``unpack(call's result) -> (value, {block: gradient})``."""

    call: Callable
    unpack: Callable


def hblogit_implementation(dataset: Dataset) -> Implementation:
    """``jax.value_and_grad(make_logdensity(dataset))``, jitted, waited for."""
    logdensity = hblogit.make_logdensity(dataset)
    value_and_grad = jax.jit(lambda f, params: jax.value_and_grad(f)(params))

    def unpack(result):
        value, gradient = result
        return float(value), {name: np.asarray(g) for name, g in gradient._asdict().items()}

    return Implementation(lambda params: jax.block_until_ready(value_and_grad(logdensity, params)), unpack)


def pymc_implementation(dataset: Dataset, precision: str) -> Implementation:
    """The PyMC model built on the same rows, with pytensor's floatX set to ``precision``.

    One compiled function returns ``model.logp()`` and ``model.dlogp()``: the graphs that
    ``compile_logp`` and ``compile_dlogp`` compile, evaluated together as a sampler would.
    The reference model's constants take the data's dtype, so float64 means float64 throughout.
    """
    import pytensor

    from reference.model import build_model, params_to_point, split_gradient

    with pytensor.config.change_flags(floatX=precision):
        model = build_model(
            np.asarray(dataset.X, dtype=precision),
            np.asarray(dataset.y).astype(np.int64),
            np.asarray(dataset.group_idx),
            num_groups=dataset.num_groups,
        )
        function = model.compile_fn([model.logp(), model.dlogp()])

    def unpack(result):
        value, gradient = result
        return float(value), split_gradient(model, gradient)

    return Implementation(lambda params: function(params_to_point(params, dtype=precision)), unpack)


class Comparison(NamedTuple):
    value_errors: list[float]  # per point
    gradient_errors: list[dict[str, float]]  # per point, per block
    median_seconds: dict[str, float]  # per implementation


def compare_at_points(implementations: dict[str, Implementation], points) -> Comparison:
    """Evaluate every implementation at every point against the last one, the reference.

    Each call is timed; one untimed warm-up call each comes first (compilation, caches).
    """
    for implementation in implementations.values():
        implementation.call(points[0][1])
    *names, reference = implementations
    value_errors, gradient_errors, seconds = [], [], {name: [] for name in implementations}
    for _, params in points:
        results = {}
        for name, implementation in implementations.items():
            start = time.perf_counter()
            raw = implementation.call(params)
            seconds[name].append(time.perf_counter() - start)
            results[name] = implementation.unpack(raw)
        ref_value, ref_gradient = results[reference]
        for name in names:
            value, gradient = results[name]
            value_errors.append(abs(value - ref_value) / abs(ref_value))
            gradient_errors.append(gradient_block_errors(gradient, ref_gradient))
    return Comparison(value_errors, gradient_errors, {name: statistics.median(s) for name, s in seconds.items()})


def gradient_block_errors(ours: dict, reference: dict) -> dict[str, float]:
    """max |ours - reference| per block, over max |reference| across the whole gradient.
    Empty blocks (the slopes' without covariates) have no error to report."""
    blocks = {name: r for name, r in reference.items() if np.size(r)}
    scale = max(float(np.max(np.abs(r))) for r in blocks.values())
    return {name: float(np.max(np.abs(ours[name] - r))) / scale for name, r in blocks.items()}


def error_table_rows(precision: str, tolerance: Tolerance, comparison: Comparison) -> list[dict]:
    """Worst over the points of: the value, the whole gradient, and each gradient block."""
    worst = {"value": max(comparison.value_errors)}
    worst["gradient"] = max(max(errors.values()) for errors in comparison.gradient_errors)
    for name in Params._fields:
        if name in comparison.gradient_errors[0]:
            worst[name] = max(errors[name] for errors in comparison.gradient_errors)
    rows = []
    for quantity, error in worst.items():
        limit = tolerance.value if quantity == "value" else tolerance.gradient
        ok = bool(error <= limit)
        rows.append(dict(precision=precision, quantity=quantity, worst_rel_error=error, tolerance=limit, ok=ok))
    return rows


# ---------------------------------------------------------------- posterior mode

# hblogit posterior variable -> PyMC variable
GLOBALS = {"alpha": "α", "beta": "β", "sigma_alpha": "σ_α", "sigma_gamma": "σ_γ"}


def posterior_check(dataset: Dataset, args: argparse.Namespace):
    """The agreement table of every global scalar, and the rows where |z| >= 5."""
    require_small_enough(dataset, args.force)
    ours = hblogit.fit(dataset, sampler=args.sampler, chains=args.chains, warmup=args.warmup, draws=args.draws, seed=args.seed)
    ours = {name: ours.posterior[name] for name in GLOBALS}
    sampler, theirs = pymc_posterior(dataset, args)
    table = posterior_table(summarise(ours, dataset), summarise(theirs, dataset))
    failures = [f"{name} (z = {z:+.1f})" for name, z, ok in zip(table.parameter, table.z, table.ok) if not ok]
    notes = (
        f"hblogit sampler {args.sampler!r}, PyMC sampler {sampler!r}; {args.chains} chains, "
        f"{args.warmup} warmup and {args.draws} draws each, seed {args.seed}. "
        "z = (mean_hblogit - mean_PyMC) / sqrt(mcse_hblogit^2 + mcse_PyMC^2); "
        f"agreement when |z| < {POSTERIOR_MAX_ABS_Z:g}."
    )
    return [("posterior", table, notes)], failures


def require_small_enough(dataset: Dataset, force: bool) -> None:
    cells, groups = dataset.num_obs * dataset.num_covariates, dataset.num_groups
    if not force and (cells > POSTERIOR_MAX_CELLS or groups > POSTERIOR_MAX_GROUPS):
        raise ValueError(
            f"posterior mode samples the model twice, which takes hours at N*K = {cells:,}, G = {groups:,} "
            f"(limits {POSTERIOR_MAX_CELLS:,} and {POSTERIOR_MAX_GROUPS:,}); pass --force to run it anyway"
        )


def pymc_posterior(dataset: Dataset, args: argparse.Namespace):
    """PyMC's draws of the globals under hblogit's names, with nutpie if installed, else NumPyro."""
    import importlib.util

    import pymc as pm

    from reference.model import build_model

    sampler = next((name for name in ("nutpie", "numpyro") if importlib.util.find_spec(name)), "pymc")
    model = build_model(
        np.asarray(dataset.X).astype(np.float64),
        np.asarray(dataset.y).astype(np.int64),
        np.asarray(dataset.group_idx),
        num_groups=dataset.num_groups,
    )
    with model:
        trace = pm.sample(
            draws=args.draws,
            tune=args.warmup,
            chains=args.chains,
            random_seed=args.seed,
            nuts_sampler=sampler,
            var_names=list(GLOBALS.values()),
            progressbar=False,
        )
    return sampler, {ours: trace.posterior[theirs] for ours, theirs in GLOBALS.items()}


def summarise(posterior: dict, dataset: Dataset) -> pd.DataFrame:
    """Mean, sd and MCSE of the mean of every global scalar, one row each.

    Coordinates are taken by position (chain, draw, then the covariate axis), so the two
    samplers' coordinate labels need not match.
    """
    import arviz as az

    rows = []
    for name, draws in posterior.items():
        array = np.asarray(draws.transpose("chain", "draw", ...))
        array = array.reshape(*array.shape[:2], -1)
        labels = [name] if draws.ndim == 2 else [f"{name}[{c}]" for c in dataset.covariate_names]
        for column, label in enumerate(labels):
            samples = array[..., column]
            mcse = float(az.mcse(samples))
            rows.append(dict(parameter=label, mean=samples.mean(), sd=samples.std(ddof=1), mcse=mcse))
    return pd.DataFrame(rows).set_index("parameter")


def posterior_table(ours: pd.DataFrame, theirs: pd.DataFrame) -> pd.DataFrame:
    table = ours.add_suffix("_hblogit").join(theirs.add_suffix("_pymc"))
    table["z"] = (table.mean_hblogit - table.mean_pymc) / np.sqrt(table.mcse_hblogit**2 + table.mcse_pymc**2)
    table["ok"] = table.z.abs() < POSTERIOR_MAX_ABS_Z
    return table.reset_index()


# ---------------------------------------------------------------- output


def write_tables(tables, out: Path, title: str) -> str:
    """Each table as ``<name>.csv`` under ``out``, all of them in ``check.md``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# {title}"]
    for name, table, notes in tables:
        table.to_csv(out / f"{name}.csv", index=False)
        sections.append(f"## {name}\n\n{markdown_table(table)}\n\n{notes}")
    markdown = "\n\n".join(sections) + "\n"
    (out / "check.md").write_text(markdown)
    return markdown


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value):
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "**NO**"
        if isinstance(value, (float, np.floating)):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
