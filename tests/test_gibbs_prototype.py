"""The refresh move of experiments/gibbs_prototype.py: exact, as the RESULTS entry assumes."""

import importlib.util
import math
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hblogit
from hblogit import model
from hblogit.data import Dataset
from tests.test_moves import prior_draws

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prototype():
    spec = importlib.util.spec_from_file_location("gibbs_prototype", ROOT / "experiments" / "gibbs_prototype.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # equinox resolves the Module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_refresh_claims_the_density_change_and_keeps_the_globals(prototype):
    data = hblogit.simulate(400, 20, 3, seed=4).dataset().astype(jnp.float64)
    params = hblogit.init_params(jax.random.key(0), data, radius=1.0)
    density = hblogit.make_logdensity(data)
    after, claimed = prototype.refresh_effects(jax.random.key(1), params, data, newton_steps=2)
    np.testing.assert_allclose(density(after) - density(params), claimed, rtol=1e-9, atol=1e-9)
    for name in ("alpha", "beta", "log_sigma_alpha", "log_sigma_gamma"):
        np.testing.assert_array_equal(getattr(after, name), getattr(params, name))
    assert np.mean(np.asarray(after.z_alpha) != np.asarray(params.z_alpha)) > 0.5  # most groups moved


def test_refresh_leaves_the_joint_distribution_invariant(prototype):
    """Draw (parameters, y) from the model, refresh z given y: the pair must still be a draw
    from the model. Each statistic's mean after the move is compared with before, on the
    paired differences, within 4.5 Monte Carlo standard errors. Few rows a group and a wide
    prior make the Laplace proposal rough, so an uncorrected proposal would show."""
    num_draws, num_groups, rows_per_group = 20_000, 3, 4
    rng = np.random.default_rng(0)
    group_idx = np.repeat(np.arange(num_groups), rows_per_group)
    empty = Dataset(rng.normal(size=(group_idx.size, 1)), np.zeros(group_idx.size), group_idx)
    start = prior_draws(1, num_draws, num_groups, 1)
    eta = jax.vmap(lambda p: model._linear_predictor(p, empty))(start)
    y = jnp.asarray(rng.uniform(size=eta.shape) < jax.nn.sigmoid(eta), jnp.float64)

    def refresh(key, params, outcome):
        return prototype.refresh_effects(key, params, eqx.tree_at(lambda d: d.y, empty, outcome))[0]

    after = jax.vmap(refresh)(jax.random.split(jax.random.key(2), num_draws), start, y)
    moved = np.mean(np.asarray(after.z_alpha) != np.asarray(start.z_alpha))
    assert 0.3 < moved < 0.99, moved  # it moves, and it rejects sometimes: the test has power

    residual = (2 * y - 1).reshape(num_draws, num_groups, rows_per_group).mean(-1)

    def statistics(p):
        return {
            "z_alpha": p.z_alpha,
            "z_alpha^2": p.z_alpha**2,
            "z_gamma^2": p.z_gamma[..., 0] ** 2,
            "z_alpha (2y - 1)": p.z_alpha * residual,
            "z_gamma x (2y - 1)": p.z_gamma[..., 0] * residual,
        }

    before, later = statistics(start), statistics(after)
    for name in before:
        difference = np.asarray(later[name] - before[name]).reshape(num_draws, -1)
        z_scores = difference.mean(0) / (difference.std(0) / math.sqrt(num_draws))
        assert np.all(np.abs(z_scores) < 4.5), (name, z_scores)
