"""Simulation-based calibration: its statistics, its simulator, and a reduced run end to end."""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hblogit import sbc
from hblogit.model import PRIOR_SD_ALPHA, PRIOR_SD_SIGMA_GAMMA, Params, make_logdensity

ROOT = Path(__file__).resolve().parents[1]


def binomial_bound(p: float, n: int) -> float:
    """Five binomial standard errors of a proportion p estimated from n trials."""
    return 5 * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def bands():
    return sbc.ecdf_bands(num_sims=100, num_draws=50, seed=1)


def test_uniform_ranks_stay_inside_the_bands_95_percent_of_the_time(bands):
    rng = np.random.default_rng(2)
    sets = rng.integers(0, 51, size=(400, 100))
    inside = np.mean([sbc.within_bands(s, 50, bands) for s in sets])
    assert abs(inside - 0.95) < binomial_bound(0.95, 400)
    pvalues = np.array([sbc.uniformity_pvalue(s, 50, bands) for s in sets])
    assert abs(np.mean(pvalues < 0.05) - 0.05) < binomial_bound(0.05, 400)


@pytest.mark.parametrize(
    "distort",
    [
        lambda u: np.minimum(u + 10, 50),  # posterior shifted below the truth
        lambda u: np.clip(25 + (u - 25) // 3, 0, 50),  # posterior too wide: ranks pile in the middle
        lambda u: np.where(u < 25, 0, 50),  # posterior too narrow: ranks pile at the ends
    ],
)
def test_miscalibrated_ranks_are_caught(bands, distort):
    ranks = distort(np.random.default_rng(3).integers(0, 51, size=100))
    assert not sbc.within_bands(ranks, 50, bands)
    assert sbc.uniformity_pvalue(ranks, 50, bands) < 0.001


def test_prior_draws_have_the_model_prior_moments():
    rng = np.random.default_rng(4)
    n = 20_000
    draws = [sbc.draw_prior(rng, num_groups=3, num_covariates=2) for _ in range(n)]
    alpha = np.array([d.alpha for d in draws])
    sigma_gamma = np.array([d.sigma_gamma for d in draws])
    z_alpha = np.array([d.alpha_group / d.sigma_alpha for d in draws])
    assert abs(alpha.mean()) < 5 * PRIOR_SD_ALPHA / np.sqrt(n)
    assert abs(alpha.std() - PRIOR_SD_ALPHA) < 5 * PRIOR_SD_ALPHA / np.sqrt(2 * n)
    half_normal_mean = PRIOR_SD_SIGMA_GAMMA * np.sqrt(2 / np.pi)
    half_normal_sd = PRIOR_SD_SIGMA_GAMMA * np.sqrt(1 - 2 / np.pi)
    assert np.all(np.abs(sigma_gamma.mean(axis=0) - half_normal_mean) < 5 * half_normal_sd / np.sqrt(n))
    assert abs(z_alpha.std() - 1.0) < 5 / np.sqrt(2 * 3 * n)


def test_the_test_quantity_is_the_models_log_likelihood_at_the_truth():
    """The NumPy log-likelihood of the SBC agrees with the model's JAX one: the ranked
    test quantity would otherwise measure a difference of codes, not calibration."""
    sim = sbc.simulate_from_prior(np.random.default_rng(5), num_obs=150, num_groups=7, num_covariates=3)
    t = sim.truth
    params = Params(
        alpha=jnp.asarray(t.alpha),
        beta=jnp.asarray(t.beta),
        log_sigma_alpha=jnp.log(t.sigma_alpha),
        log_sigma_gamma=jnp.log(t.sigma_gamma),
        z_alpha=jnp.asarray(t.alpha_group / t.sigma_alpha),
        z_gamma=jnp.asarray(t.gamma_group / t.sigma_gamma),
    )
    expected = float(make_logdensity(sim.dataset().astype(jnp.float64)).log_likelihood(params))
    names = sbc.quantity_names(3)
    assert sbc.true_quantities(sim)[names.index("log_likelihood")] == pytest.approx(expected, rel=1e-10)


def test_ranks_count_the_draws_below_the_truth():
    draws = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    assert sbc.ranks(np.array([1.5, 10.0]), draws).tolist() == [2, 3]


def load_experiment():
    spec = importlib.util.spec_from_file_location("sbc_experiment", ROOT / "experiments" / "sbc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_reduced_sbc_of_nuts_runs_and_shows_no_miscalibration(tmp_path):
    """12 simulations: little power, but every piece runs as in the full experiment, and a
    gross error (a quantity whose p-value falls below 0.001 / 9, Bonferroni over the nine
    quantities) fails it."""
    experiment = load_experiment()
    args = ["--sims", "12", "--num-obs", "120", "--num-groups", "6", "--warmup", "200", "--out", str(tmp_path)]
    assert experiment.main(args) == 0
    frame = pd.read_csv(tmp_path / "ranks.csv")
    names = sbc.quantity_names(2)
    ranks = frame[names].to_numpy()
    assert ranks.shape == (12, 9) and ranks.min() >= 0 and ranks.max() <= 100
    bands = sbc.ecdf_bands(12, 100)
    assert min(sbc.uniformity_pvalue(r, 100, bands) for r in ranks.T) > 0.001 / len(names)
    assert (tmp_path / "sbc_nuts.png").stat().st_size > 0 and "uniformity p-value" in (tmp_path / "table.md").read_text()
