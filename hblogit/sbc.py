"""Simulation-based calibration (Talts et al. 2018; Modrák et al. 2023) for the model.

Draw the parameters from the prior, simulate data from them with hblogit's own outcome
generator (``data.draw_outcome``), fit, and rank each true value among the (thinned)
posterior draws. If the fit is right, every rank is uniform over its possible values.
Besides the global parameters, two group effects and a data-dependent test quantity are
ranked: the log-likelihood of the data at the parameters. Plain SBC of the parameters
alone can miss a bug that mixes up rows and groups; the log-likelihood cannot.

Uniformity is judged with ECDF-difference curves and simultaneous 95% bands (Säilynoja,
Bürkner and Vehtari 2022), found by simulating uniform ranks. The p-value of a quantity is
the share of uniform rank sets whose ECDF strays at least as far (in binomial tail
probability, at its worst point) as the quantity's own.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from .data import Simulated, Truth, draw_outcome
from .model import PRIOR_SD_ALPHA, PRIOR_SD_BETA, PRIOR_SD_SIGMA_ALPHA, PRIOR_SD_SIGMA_GAMMA


def draw_prior(rng: np.random.Generator, num_groups: int, num_covariates: int) -> Truth:
    """One draw of every parameter from the model's prior (constrained scale)."""
    alpha = rng.normal(0.0, PRIOR_SD_ALPHA)
    beta = rng.normal(0.0, PRIOR_SD_BETA, num_covariates)
    sigma_alpha = abs(rng.normal(0.0, PRIOR_SD_SIGMA_ALPHA))
    sigma_gamma = np.abs(rng.normal(0.0, PRIOR_SD_SIGMA_GAMMA, num_covariates))
    alpha_group = sigma_alpha * rng.normal(size=num_groups)
    gamma_group = sigma_gamma * rng.normal(size=(num_groups, num_covariates))
    return Truth(alpha, beta, sigma_alpha, sigma_gamma, alpha_group, gamma_group)


def simulate_from_prior(rng: np.random.Generator, num_obs: int, num_groups: int, num_covariates: int) -> Simulated:
    """Parameters from the prior, covariates N(0, 1) in float32 and groups uniform, as in
    ``hblogit.simulate``; the outcome from ``draw_outcome``."""
    truth = draw_prior(rng, num_groups, num_covariates)
    group_idx = rng.integers(0, num_groups, size=num_obs)
    X = rng.normal(size=(num_obs, num_covariates)).astype(np.float32)
    y = draw_outcome(rng, X, group_idx, truth.alpha, truth.beta, truth.alpha_group, truth.gamma_group)
    return Simulated(X, y, group_idx, truth)


def quantity_names(num_covariates: int) -> list[str]:
    return [
        "alpha",
        *(f"beta[{k}]" for k in range(num_covariates)),
        "sigma_alpha",
        *(f"sigma_gamma[{k}]" for k in range(num_covariates)),
        "alpha_group[0]",
        "gamma_group[0,0]",
        "log_likelihood",
    ]


def log_likelihood(sim: Simulated, alpha, beta, alpha_group, gamma_group) -> np.ndarray:
    """log p(y | parameters) for a batch of parameter sets (leading axis), in float64 NumPy,
    written apart from the model's JAX code so that it checks it."""
    X = sim.X.astype(np.float64)
    g = sim.group_idx
    slopes = beta[:, None, :] + gamma_group[:, g, :]  # (draw, row, K)
    eta = alpha[:, None] + alpha_group[:, g] + np.einsum("rk,drk->dr", X, slopes)
    sign = 2.0 * sim.y - 1.0
    return -np.logaddexp(0.0, -sign * eta).sum(axis=1)


def quantities(sim: Simulated, alpha, beta, sigma_alpha, sigma_gamma, alpha_group, gamma_group) -> np.ndarray:
    """(draws, Q): the ranked quantities of ``quantity_names`` for a batch of parameter sets."""
    return np.column_stack(
        [
            alpha,
            beta,
            sigma_alpha,
            sigma_gamma,
            alpha_group[:, 0],
            gamma_group[:, 0, 0],
            log_likelihood(sim, alpha, beta, alpha_group, gamma_group),
        ]
    )


def true_quantities(sim: Simulated) -> np.ndarray:
    """(Q,): the quantities at the parameters the data was drawn from."""
    t = sim.truth
    batch = lambda x: np.asarray(x, dtype=np.float64)[None]
    return quantities(sim, *map(batch, t))[0]


def ranks(true: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(Q,): how many draws fall below the true value, per quantity (0 .. len(draws))."""
    return (draws < true[None, :]).sum(axis=0)


class Bands(NamedTuple):
    """Simultaneous bands for the ECDF of ``num_sims`` ranks on 0 .. num_draws."""

    z: np.ndarray  # the grid i / (num_draws + 1), i = 1 .. num_draws
    lower: np.ndarray  # ECDF bounds at z
    upper: np.ndarray
    null_statistics: np.ndarray  # the statistic of each simulated uniform rank set


def ecdf(rank_sets: np.ndarray, num_draws: int) -> np.ndarray:
    """(..., num_draws): the ECDF of each set of ranks (last axis) at i / (num_draws + 1)."""
    grid = np.arange(1, num_draws + 1)
    return (rank_sets[..., None, :] < grid[:, None]).mean(axis=-1)


def _statistic(ecdf_values: np.ndarray, num_sims: int, z: np.ndarray) -> np.ndarray:
    """The smallest two-sided binomial tail probability over the grid: small when the ECDF
    strays far from uniform at some point."""
    counts = np.rint(ecdf_values * num_sims)
    below = stats.binom.cdf(counts, num_sims, z)
    above = stats.binom.sf(counts - 1, num_sims, z)
    return np.minimum(1.0, 2.0 * np.minimum(below, above)).min(axis=-1)


def ecdf_bands(num_sims: int, num_draws: int, level: float = 0.95, null_sets: int = 4000, seed: int = 0) -> Bands:
    """Bands that hold a uniform ECDF entirely with probability ``level``, by simulation."""
    z = np.arange(1, num_draws + 1) / (num_draws + 1)
    rng = np.random.default_rng(seed)
    null = _statistic(ecdf(rng.integers(0, num_draws + 1, size=(null_sets, num_sims)), num_draws), num_sims, z)
    gamma = np.quantile(null, 1.0 - level)
    lower = stats.binom.ppf(gamma / 2, num_sims, z) / num_sims
    upper = stats.binom.ppf(1 - gamma / 2, num_sims, z) / num_sims
    return Bands(z, lower, upper, null)


def uniformity_pvalue(rank_set: np.ndarray, num_draws: int, bands: Bands) -> float:
    """The share of uniform rank sets whose statistic is at most this one's."""
    observed = _statistic(ecdf(rank_set, num_draws), rank_set.shape[-1], bands.z)
    return float((bands.null_statistics <= observed).mean())


def within_bands(rank_set: np.ndarray, num_draws: int, bands: Bands) -> bool:
    values = ecdf(rank_set, num_draws)
    return bool(np.all((values >= bands.lower) & (values <= bands.upper)))


def plot_ecdf_differences(rank_table: np.ndarray, names: list[str], num_draws: int, bands: Bands, title: str, path) -> None:
    """One panel per quantity: ECDF minus the uniform CDF, with the simultaneous band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, name, rank_set in zip(axes.flat, names, rank_table.T):
        ax.fill_between(bands.z, bands.lower - bands.z, bands.upper - bands.z, step="mid", color="0.85")
        ax.step(bands.z, ecdf(rank_set, num_draws) - bands.z, where="mid", color="C0")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(f"{name}  p = {uniformity_pvalue(rank_set, num_draws, bands):.2f}", fontsize=9)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("fractional rank")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
