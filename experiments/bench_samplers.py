"""Which sampler converges fastest: every registered sampler on the same data.

    python experiments/bench_samplers.py [--problem reference-small|preset|simulate] [--preset small]
        [--num-obs N --num-groups G --num-covariates K] [--samplers nuts,hmc,...]
        [--chains 8] [--warmup 1000] [--draws 1000] [--thin NAME=K ...] [--seed 0] [--out DIR]

Problems: ``reference-small`` (default) fits the dataset of the committed PyMC reference
posterior (``reference/posterior_small.json``) and compares the posterior means with its
moments; ``preset`` fits ``hblogit.presets.PRESETS[--preset]``, ``simulate`` the post's
generator at ``--num-obs``, ``--num-groups``, ``--num-covariates`` (seed 827), e.g. the
post's 10 rows a group at a CPU's size (no reference for either: the error column is empty).

A sampler may carry options, ``NAME:KEY=VALUE:KEY=VALUE`` (as ``--sampler-opt``), to
compare settings of one sampler: ``--samplers nuts:transport=false,nuts``.

Every sampler gets the same chains, warm-up steps and kept draws. Samplers whose step costs
one or two gradients keep one draw every K steps (``--thin``, defaults in THIN) so that a
kept draw costs roughly what a NUTS draw does and every ESS estimate rests on similar
autocorrelation; the gradient columns count every step, thinned or not, so ESS per gradient
stays comparable. Per sampler: wall time split into starting points and compilation (which
overlap), warm-up and sampling (the run record), gradient evaluations, min and median bulk
and tail ESS over the global parameters with the slowest one's name, min bulk ESS per 1000
sampling gradients and per sampling second, max R-hat, divergences, and the largest
|posterior mean - reference| / sqrt(mcse^2 + ref_se^2).

Writes ``table.md`` and ``ess_per_second.png`` to ``--out`` (default
``runs/bench-samplers-<timestamp>``) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

import hblogit
from hblogit.fit import parse_sampler_options, run_record
from hblogit.presets import PRESETS
from hblogit.results import summary
from hblogit.runner import start_seconds
from hblogit.samplers import SAMPLERS

THIN = {"mclmc": 4, "mams": 2, "meads": 8}  # one or two gradients a step; see the docstring

COLUMNS = [
    ("sampler", "{}"),
    ("start_s", "{:.1f}"),
    ("warmup_s", "{:.1f}"),
    ("sampling_s", "{:.1f}"),
    ("warmup_grads", "{:,}"),
    ("sampling_grads", "{:,}"),
    ("min_ess_bulk", "{:.0f}"),
    ("slowest", "{}"),
    ("median_ess_bulk", "{:.0f}"),
    ("min_ess_tail", "{:.0f}"),
    ("median_ess_tail", "{:.0f}"),
    ("ess_per_1000_grads", "{:.2f}"),
    ("ess_per_s", "{:.1f}"),
    ("max_r_hat", "{:.3f}"),
    ("divergences", "{}"),
    ("max_abs_z", "{:.1f}"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=["reference-small", "preset", "simulate"], default="reference-small")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="with --problem preset")
    parser.add_argument("--num-obs", type=int, default=20_000, help="with --problem simulate")
    parser.add_argument("--num-groups", type=int, default=2_000, help="with --problem simulate")
    parser.add_argument("--num-covariates", type=int, default=4, help="with --problem simulate")
    parser.add_argument(
        "--samplers", default=",".join(sorted(SAMPLERS)), help="comma-separated, each NAME[:KEY=VALUE...] (default: all)"
    )
    parser.add_argument("--chains", type=int, default=8, help="with meads among the samplers, a multiple of 4 and at least 8 (default: 8)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000, help="kept draws per chain")
    parser.add_argument("--thin", action="append", default=[], metavar="NAME=K", help=f"thinning per sampler (default: {THIN})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def problem(args):
    """(dataset, reference moments or None, one-line description)."""
    if args.problem == "reference-small":
        from reference.posterior import load_reference

        reference = load_reference("small")
        return reference.data.dataset(), reference.moments, f"reference-small {reference.spec}"
    if args.problem == "simulate":
        shape = dict(num_obs=args.num_obs, num_groups=args.num_groups, num_covariates=args.num_covariates)
        return hblogit.simulate(**shape, seed=827).dataset(), None, f"simulate {shape}"
    return hblogit.simulate(**PRESETS[args.preset]).dataset(), None, f"preset {args.preset} {PRESETS[args.preset]}"


def sampler_spec(spec: str) -> tuple[str, dict]:
    """``"nuts:transport=false"`` -> ("nuts", {"transport": False})."""
    name, *options = spec.split(":")
    return name, parse_sampler_options(options)


def max_abs_z(idata, moments) -> float:
    import arviz as az

    from tests.test_fit import global_scalars

    draws = global_scalars(idata)
    zs = [
        abs(draws[name].mean() - mean) / np.sqrt(float(az.mcse(draws[name])) ** 2 + se**2)
        for name, (mean, _, se) in moments.items()
    ]
    return float(max(zs))


def row(name: str, idata, moments) -> dict:
    timings = run_record(idata)["timings"]
    table = summary(idata)
    warmup_grads = int(idata["warmup_sample_stats"]["n_steps"].sum())
    sampling_grads = int(idata["sample_stats"]["n_steps"].sum())
    min_bulk = float(table["ess_bulk"].min())
    return dict(
        sampler=name,
        start_s=start_seconds(timings),
        warmup_s=timings["warmup_s"],
        sampling_s=timings["sampling_s"],
        warmup_grads=warmup_grads,
        sampling_grads=sampling_grads,
        min_ess_bulk=min_bulk,
        slowest=str(table["ess_bulk"].idxmin()),
        median_ess_bulk=float(table["ess_bulk"].median()),
        min_ess_tail=float(table["ess_tail"].min()),
        median_ess_tail=float(table["ess_tail"].median()),
        ess_per_1000_grads=1000 * min_bulk / sampling_grads,
        ess_per_s=min_bulk / timings["sampling_s"],
        max_r_hat=float(table["r_hat"].max()),
        divergences=int(idata["sample_stats"]["diverging"].sum()),
        max_abs_z=max_abs_z(idata, moments) if moments else float("nan"),
    )


def markdown(rows) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "| --- " + "| ---: " * (len(COLUMNS) - 1) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[c]) for c, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["sampler"] for r in rows]
    ax.barh(names, [r["ess_per_s"] for r in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("min bulk ESS per second of sampling")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    thin = {**THIN, **{k: int(v) for k, v in parse_sampler_options(args.thin).items()}}
    dataset, moments, description = problem(args)
    out = args.out or Path("runs") / dt.datetime.now().strftime("bench-samplers-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    print(f"{description}; chains {args.chains}, warm-up {args.warmup}, draws {args.draws}, thin {thin}", flush=True)
    rows = []
    for spec in args.samplers.split(","):
        name, options = sampler_spec(spec)
        idata = hblogit.fit(
            dataset,
            sampler=name,
            sampler_options=options,
            chains=args.chains,
            warmup=args.warmup,
            draws=args.draws,
            thin=thin.get(name, 1),
            seed=args.seed,
            progress=False,
        )
        rows.append(row(spec, idata, moments))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    table = markdown(rows)
    (out / "table.md").write_text(table + "\n")
    plot(rows, out / "ess_per_second.png")
    print(f"\n{table}\n\nwrote {out}/table.md, {out}/ess_per_second.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
