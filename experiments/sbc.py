"""Simulation-based calibration of a sampler on the model (see ``hblogit.sbc``).

    python experiments/sbc.py [--sampler nuts] [--sampler-opt KEY=VALUE ...] [--sims 200]
        [--num-obs 200] [--num-groups 10] [--num-covariates 2] [--chains 4] [--warmup 300]
        [--draws 25] [--thin 10] [--seed 0] [--out DIR]

Each simulation draws parameters from the prior, simulates data, fits it with
``hblogit.fit`` (mixed precision, every group kept) and ranks the true global parameters,
two group effects and the log-likelihood at the true parameters among the chains' thinned
draws: ``--chains`` x ``--draws`` draws, one every ``--thin`` steps, so that the draws
ranked are close to independent (an ESS well below their number would pile ranks at the
ends). Every simulation has the same shapes, so the fit compiles once; each later fit is
one dispatch per chunk of steps.

Simulations run one after another. Running them as one program vmapped over datasets
(the runner's chunk programs under ``jax.vmap``) was measured slower on the 2-core CPU:
about 1.7 s more per simulation added to a batch (8 and 25 simulations, NUTS), against
0.5-0.9 s per simulation one at a time, because vmapped NUTS runs every chain of the batch
to the deepest tree among them and the CPU has no idle lanes for the batch to fill.

Writes ``ranks.csv`` (one row per simulation, with its max R-hat and divergences),
``sbc_<sampler>.png`` (ECDF differences with simultaneous 95% bands) and ``table.md`` (the
uniformity p-value per quantity) to ``--out`` (default ``runs/sbc-<sampler>``), and prints
the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import hblogit
from hblogit import results, sbc
from hblogit.fit import parse_sampler_options


def draws_of(idata) -> dict[str, np.ndarray]:
    """Every kept parameter, chains and draws flattened into one leading axis."""
    posterior = idata["posterior"]
    flat = lambda name: posterior[name].values.reshape(-1, *posterior[name].shape[2:])
    return {name: flat(name) for name in ("alpha", "beta", "sigma_alpha", "sigma_gamma", "alpha_group", "gamma_group")}


def one_simulation(rng, args, options) -> tuple[np.ndarray, float, int]:
    """Ranks of the quantities, max R-hat over the globals, divergences."""
    sim = sbc.simulate_from_prior(rng, args.num_obs, args.num_groups, args.num_covariates)
    idata = hblogit.fit(
        sim.dataset(),
        sampler=args.sampler,
        sampler_options=options,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        thin=args.thin,
        seed=int(rng.integers(2**31)),
        keep_groups=list(range(args.num_groups)),
        progress=False,
    )
    d = draws_of(idata)
    draws = sbc.quantities(sim, d["alpha"], d["beta"], d["sigma_alpha"], d["sigma_gamma"], d["alpha_group"], d["gamma_group"])
    table = results.summary(idata)
    return sbc.ranks(sbc.true_quantities(sim), draws), float(table["r_hat"].max()), int(idata["sample_stats"]["diverging"].sum())


def markdown(rank_table: np.ndarray, names, num_draws: int, bands: sbc.Bands) -> str:
    lines = ["| quantity | uniformity p-value | ECDF inside the 95% band |", "| --- | --- | --- |"]
    for name, rank_set in zip(names, rank_table.T):
        inside = "yes" if sbc.within_bands(rank_set, num_draws, bands) else "**no**"
        lines.append(f"| {name} | {sbc.uniformity_pvalue(rank_set, num_draws, bands):.3f} | {inside} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sampler", default="nuts")
    parser.add_argument("--sampler-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--num-obs", type=int, default=200)
    parser.add_argument("--num-groups", type=int, default=10)
    parser.add_argument("--num-covariates", type=int, default=2)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--draws", type=int, default=25, help="kept draws per chain")
    parser.add_argument("--thin", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / f"sbc-{args.sampler}"
    out.mkdir(parents=True, exist_ok=True)
    options = parse_sampler_options(args.sampler_opt)
    names = sbc.quantity_names(args.num_covariates)
    num_draws = args.chains * args.draws
    rng = np.random.default_rng(args.seed)
    rows, start = [], time.perf_counter()
    for _ in tqdm(range(args.sims), desc=f"SBC {args.sampler}"):
        rank_row, max_r_hat, divergences = one_simulation(rng, args, options)
        rows.append([*rank_row, max_r_hat, divergences])
    seconds = time.perf_counter() - start
    frame = pd.DataFrame(rows, columns=[*names, "max_r_hat", "divergences"])
    frame.to_csv(out / "ranks.csv", index_label="simulation")
    rank_table = frame[names].to_numpy()
    bands = sbc.ecdf_bands(args.sims, num_draws)
    title = f"SBC, {args.sampler}: {args.sims} simulations, N={args.num_obs} G={args.num_groups} K={args.num_covariates}, {num_draws} draws"
    sbc.plot_ecdf_differences(rank_table, names, num_draws, bands, title, out / f"sbc_{args.sampler}.png")
    table = markdown(rank_table, names, num_draws, bands)
    summary = (
        f"{args.sims} simulations in {seconds:.0f} s ({seconds / args.sims:.2f} s each); "
        f"max R-hat over the globals (on the {num_draws} thinned draws, so noisy): median "
        f"{frame['max_r_hat'].median():.3f}, 95th percentile {frame['max_r_hat'].quantile(0.95):.3f}; "
        f"with divergences: {(frame['divergences'] > 0).sum()} ({frame['divergences'].sum()} in all)"
    )
    (out / "table.md").write_text(f"{title}\n\n{table}\n\n{summary}\n")
    print(table, summary, f"wrote {out}/", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
