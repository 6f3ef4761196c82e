"""Sample a reference posterior with PyMC + nutpie and record it as ``posterior_<name>.json``.

    python -m reference.make_posterior [--name small] [--chains 4] [--draws 5000] [--tune 2000] [--seed 1]

The JSON holds what is needed to trust and reproduce the numbers (in the spirit of Inference
Gym): the problem spec and data digests, the command, sampler settings and package versions,
and per global scalar the posterior mean, sd, Monte Carlo standard error of the mean, bulk ESS
and r_hat. The script refuses to write a reference that fails its convergence checks.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import shlex
import sys
import time

import numpy as np

import hblogit
from reference.model import build_model
from reference.posterior import data_digests, reference_path, scalar_names

# Reference problems: keyword arguments of hblogit.simulate.
PROBLEMS = {
    "small": dict(num_obs=3000, num_groups=30, num_covariates=3, seed=11),
}

MAX_R_HAT = 1.01

# hblogit scalar-name prefix -> PyMC variable name
GLOBAL_VARS = {"alpha": "α", "beta": "β", "sigma_alpha": "σ_α", "sigma_gamma": "σ_γ"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m reference.make_posterior", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="small", choices=sorted(PROBLEMS))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=5000)
    parser.add_argument("--tune", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-accept", type=float, default=0.8)
    return parser.parse_args(argv)


def float64_model(sim: hblogit.Simulated):
    """The PyMC model on float64 data, so the graph (and the reference) is float64."""
    return build_model(sim.X.astype(np.float64), sim.y, sim.group_idx, num_groups=len(sim.truth.alpha_group))


def sample(model, *, chains, draws, tune, seed, target_accept):
    """Sample with nutpie, or NumPyro through PyMC when nutpie is missing; returns (trace, sampler)."""
    try:
        import nutpie
    except ImportError:
        import pymc as pm

        with model:
            trace = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                random_seed=seed,
                target_accept=target_accept,
                nuts_sampler="numpyro",
                progressbar=False,
            )
        return trace, "numpyro"
    compiled = nutpie.compile_pymc_model(model)
    trace = nutpie.sample(
        compiled,
        draws=draws,
        tune=tune,
        chains=chains,
        seed=seed,
        target_accept=target_accept,
        progress_bar=False,
    )
    return trace, "nutpie"


def pymc_label_to_ours(label: str) -> str:
    """``β[0]`` -> ``beta[0]``: arviz's row label in hblogit's scalar names."""
    ours = {pymc: name for name, pymc in GLOBAL_VARS.items()}
    var, bracket, rest = label.partition("[")
    return ours[var] + bracket + rest


def scalar_summary(trace, num_covariates: int) -> dict[str, dict[str, float]]:
    """mean, sd, mcse_mean, ess_bulk, r_hat of every global scalar (arviz's rank-normalised ones)."""
    import arviz

    table = arviz.summary(trace, var_names=list(GLOBAL_VARS.values()), kind="all", round_to="none")
    columns = ["mean", "sd", "mcse_mean", "ess_bulk", "r_hat"]
    rows = {pymc_label_to_ours(label): {c: float(row[c]) for c in columns} for label, row in table.iterrows()}
    names = scalar_names(num_covariates)
    if sorted(rows) != sorted(names):
        raise RuntimeError(f"summary rows {sorted(rows)} are not the global scalars {names}")
    return {name: rows[name] for name in names}


def count_divergences(trace) -> int:
    return int(trace["sample_stats"]["diverging"].sum())


def versions(sampler: str) -> dict[str, str]:
    packages = ["pymc", "pytensor", sampler, "numpy", "arviz", "arviz-stats", "hblogit"]
    found = {p: importlib.metadata.version(p) for p in packages}
    return {**found, "python": platform.python_version()}


def check_convergence(scalars, divergences: int, target_accept: float) -> None:
    """Refuse a reference that did not converge: it would be a wrong target for every test."""
    worst = max(scalars, key=lambda name: scalars[name]["r_hat"])
    problems = []
    if scalars[worst]["r_hat"] > MAX_R_HAT:
        problems.append(f"r_hat of {worst} is {scalars[worst]['r_hat']:.4f} > {MAX_R_HAT}")
    if divergences:
        problems.append(f"{divergences} divergent transitions")
    if problems:
        raise SystemExit(
            "reference posterior rejected: " + "; ".join(problems)
            + f". Rerun with a higher --target-accept (was {target_accept}) or more --tune/--draws."
        )


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    spec = PROBLEMS[args.name]
    sim = hblogit.simulate(**spec)
    model = float64_model(sim)
    start = time.perf_counter()
    trace, sampler = sample(
        model, chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed, target_accept=args.target_accept
    )
    seconds = time.perf_counter() - start
    scalars = scalar_summary(trace, spec["num_covariates"])
    divergences = count_divergences(trace)
    check_convergence(scalars, divergences, args.target_accept)
    record = {
        "name": args.name,
        "problem": spec,
        "digests": data_digests(sim),
        "command": shlex.join(["python", "-m", "reference.make_posterior", *argv]),
        "seed": args.seed,
        "sampler": {
            "name": sampler,
            "chains": args.chains,
            "draws": args.draws,
            "tune": args.tune,
            "target_accept": args.target_accept,
            "dtype": "float64",
            "compile_and_sample_seconds": round(seconds, 1),
        },
        "versions": versions(sampler),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "max_r_hat": max(s["r_hat"] for s in scalars.values()),
        "min_ess_bulk": min(s["ess_bulk"] for s in scalars.values()),
        "divergences": divergences,
        "scalars": scalars,
    }
    path = reference_path(args.name)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}: max r_hat {record['max_r_hat']:.4f}, min ess_bulk {record['min_ess_bulk']:.0f}, "
          f"{divergences} divergences, compile + sample {seconds:.0f} s")


if __name__ == "__main__":
    main()
