"""Draws -> ArviZ DataTree, the summary table, the diagnostics verdict, plots, run record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import arviz as az
import numpy as np
import xarray as xr

from .runner import RunResult

GLOBALS = ["alpha", "beta", "sigma_alpha", "sigma_gamma"]
RHAT_MAX = 1.01
ESS_MIN = 400
TREEDEPTH_FRACTION_MAX = 0.01
EBFMI_MIN = 0.3


def _labels(dataset, groups):
    labels = dataset.group_labels
    return [labels[g] for g in groups] if labels is not None else list(groups)


def to_datatree(result: RunResult, dataset, record: dict) -> xr.DataTree:
    """posterior (globals and kept groups), sample_stats, warmup_sample_stats, group_moments."""
    covariates = list(dataset.covariate_names)
    kept = list(result.keep_groups)
    dims = {
        "beta": ["covariate"],
        "sigma_gamma": ["covariate"],
        "alpha_group": ["kept_group"],
        "gamma_group": ["kept_group", "covariate"],
    }
    coords = {"covariate": covariates, "kept_group": _labels(dataset, kept)}
    idata = az.from_dict(
        {
            "posterior": result.draws,
            "sample_stats": result.sample_stats,
            "warmup_sample_stats": result.warmup_sample_stats,
        },
        dims=dims,
        coords=coords,
        save_warmup=True,
    )
    idata.attrs["hblogit_run"] = json.dumps(record, default=str)
    idata["group_moments"] = xr.DataTree(pooled_group_moments(result, dataset))
    return idata


def pooled_group_moments(result: RunResult, dataset) -> xr.Dataset:
    """Per-group posterior mean and sd over all chains, from the streamed per-chain moments."""
    groups = _labels(dataset, range(dataset.num_groups))
    data = {}
    for name, extra_dims in (("alpha_group", []), ("gamma_group", ["covariate"])):
        mean, sd = result.group_mean[name], result.group_sd[name]
        pooled_mean = mean.mean(axis=0)
        pooled_var = (sd**2).mean(axis=0) + mean.var(axis=0)
        data[f"{name}_mean"] = (["group", *extra_dims], pooled_mean)
        data[f"{name}_sd"] = (["group", *extra_dims], np.sqrt(pooled_var))
    return xr.Dataset(data, coords={"group": groups, "covariate": list(dataset.covariate_names)})


def global_names(idata) -> list[str]:
    """The global parameters that have values: without covariates, beta and sigma_gamma are empty."""
    return [name for name in GLOBALS if idata["posterior"][name].size]


def summary(idata):
    """az.summary of the global parameters: mean, sd, eti89, ess_bulk, ess_tail, r_hat, mcse."""
    return az.summary(idata, var_names=global_names(idata), ci_kind="eti", ci_prob=0.89, round_to="none")


class Verdict(NamedTuple):
    warnings: list[str]
    min_ess_bulk: float
    min_ess_tail: float
    max_r_hat: float
    divergences: int
    gradient_evaluations: int  # sampling
    warmup_gradient_evaluations: int
    divergences_by_chain: list[int]
    first_divergence: tuple[int, int] | None  # (chain, draw) of the earliest divergent draw
    warmup_divergences: int

    @property
    def ok(self) -> bool:
        return not self.warnings


def diagnose(idata, table) -> Verdict:
    stats = idata["sample_stats"]
    warnings = []
    max_r_hat = float(table["r_hat"].max())
    if max_r_hat > RHAT_MAX:
        worst = table["r_hat"].idxmax()
        warnings.append(f"R-hat up to {max_r_hat:.3f} (> {RHAT_MAX}), worst {worst}: the chains disagree")
    for column in ("ess_bulk", "ess_tail"):
        low = float(table[column].min())
        if low < ESS_MIN:
            warnings.append(f"{column} down to {low:.0f} (< {ESS_MIN}) at {table[column].idxmin()}")
    diverging = np.asarray(stats["diverging"].values, dtype=bool)  # (chain, draw)
    divergences = int(diverging.sum())
    first = _first_divergence(diverging)
    if divergences:
        warnings.append(
            f"{divergences} divergent transition(s) after warm-up (per chain {diverging.sum(axis=1).tolist()}; "
            f"first at draw {first[1]} of chain {first[0]}): the sampler could not follow the posterior "
            "there, so the draws may be biased; a higher target acceptance rate (smaller steps) often helps"
        )
    at_max = float(stats["reached_max_treedepth"].mean())
    if at_max > TREEDEPTH_FRACTION_MAX:
        warnings.append(f"maximum tree depth hit on {at_max:.1%} of draws (> {TREEDEPTH_FRACTION_MAX:.0%})")
    energy = stats["energy"]
    if bool(np.all(np.isfinite(energy.values))):
        ebfmi = np.atleast_1d(az.bfmi(idata)["energy"].values)
        if np.any(ebfmi < EBFMI_MIN):
            warnings.append(f"E-BFMI {np.round(ebfmi, 2).tolist()} below {EBFMI_MIN} in some chain")
    return Verdict(
        warnings,
        float(table["ess_bulk"].min()),
        float(table["ess_tail"].min()),
        max_r_hat,
        divergences,
        int(stats["n_steps"].sum()),
        _warmup_total(idata, "n_steps"),
        diverging.sum(axis=1).tolist(),
        first,
        _warmup_total(idata, "diverging"),
    )


def _first_divergence(diverging: np.ndarray) -> tuple[int, int] | None:
    """(chain, draw) of the earliest divergent draw over all chains, or None."""
    if not diverging.any():
        return None
    draw = int(np.argmax(diverging.any(axis=0)))
    return int(np.argmax(diverging[:, draw])), draw


def _warmup_total(idata, name: str) -> int:
    if "warmup_sample_stats" not in idata.children:
        return 0
    return int(idata["warmup_sample_stats"][name].sum())


def plot_trace(idata, path: Path) -> None:
    import arviz_plots as azp
    import matplotlib

    matplotlib.use("Agg")
    pc = azp.plot_trace_dist(idata, var_names=global_names(idata), backend="matplotlib")
    pc.savefig(path)


def plot_recovery(idata, truth, path: Path) -> None:
    """Posterior mean and 89% interval against the true value, one point per global scalar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    posterior = idata["posterior"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    present = global_names(idata)
    for name, marker in zip(GLOBALS, "osD^"):  # a marker per name, whichever are present
        if name not in present:
            continue
        draws = posterior[name].values.reshape(-1, *posterior[name].shape[2:]).reshape(
            posterior[name].shape[0] * posterior[name].shape[1], -1
        )
        true = np.atleast_1d(np.asarray(getattr(truth, name), dtype=float))
        low, high = np.quantile(draws, [0.055, 0.945], axis=0)
        mean = draws.mean(axis=0)
        ax.errorbar(true, mean, yerr=[mean - low, high - mean], fmt=marker, ms=4, capsize=2, label=name)
    lims = np.array(ax.get_xlim() + ax.get_ylim())
    lims = [lims.min(), lims.max()]
    ax.plot(lims, lims, color="grey", lw=1)
    ax.set_xlabel("true value")
    ax.set_ylabel("posterior mean and 89% interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_verdict(verdict: Verdict) -> str:
    if verdict.ok:
        return (
            f"Diagnostics: OK (max R-hat {verdict.max_r_hat:.3f}, min bulk ESS {verdict.min_ess_bulk:.0f}, "
            f"min tail ESS {verdict.min_ess_tail:.0f}, no divergences)"
        )
    return "Diagnostics: WARNING\n" + "\n".join(f"  - {w}" for w in verdict.warnings)
