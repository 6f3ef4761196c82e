"""The scale moves (``hblogit.moves``): what each keeps, that each claims the density change
it makes, that they leave the model invariant, and how the samplers take them."""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hblogit
from hblogit import model, moves
from hblogit.data import Dataset, Truth
from hblogit.layout import block_dataset
from hblogit.model import Params
from hblogit.sbc import draw_prior
from tests.test_fit import assert_agrees_with_reference, reference  # noqa: F401  (fixture)
from tests.test_layout import uneven_problem

NUM_DRAWS = 20_000


def prior_draws(seed, num_draws, num_groups, num_covariates) -> Params:
    """Independent draws of the prior (``hblogit.sbc.draw_prior``), on the unconstrained scale."""
    rng = np.random.default_rng(seed)
    draws = Truth(*map(np.stack, zip(*(draw_prior(rng, num_groups, num_covariates) for _ in range(num_draws)))))
    return jax.tree.map(
        jnp.asarray,
        Params(
            alpha=draws.alpha,
            beta=draws.beta,
            log_sigma_alpha=np.log(draws.sigma_alpha),
            log_sigma_gamma=np.log(draws.sigma_gamma),
            z_alpha=draws.alpha_group / draws.sigma_alpha[:, None],
            z_gamma=draws.gamma_group / draws.sigma_gamma[:, None, :],
        ),
    )


class ModelDraws(NamedTuple):
    """Independent draws of (parameters, y) from the model: one covariate, equal groups."""

    params: Params
    y: jax.Array  # (draws, rows)
    data: Dataset  # the rows, with y left at zero (``moved`` puts each draw's in)
    residual: jax.Array  # (draws, groups): each group's mean of 2 y - 1

    def moved(self, move, key) -> Params:
        """``move(key, params, data) -> (params, change)`` applied to every draw, given its y."""

        def one(key, params, outcome):
            return move(key, params, eqx.tree_at(lambda d: d.y, self.data, outcome))[0]

        return jax.vmap(one)(jax.random.split(key, self.y.shape[0]), self.params, self.y)


def model_draws(seed, num_draws, num_groups, rows_per_group) -> ModelDraws:
    rng = np.random.default_rng(seed)
    group_idx = np.repeat(np.arange(num_groups), rows_per_group)
    data = Dataset(rng.normal(size=(group_idx.size, 1)), np.zeros(group_idx.size), group_idx)
    params = prior_draws(seed + 1, num_draws, num_groups, 1)
    eta = jax.vmap(lambda p: model._linear_predictor(p, data))(params)
    y = jnp.asarray(rng.uniform(size=eta.shape) < jax.nn.sigmoid(eta), jnp.float64)
    return ModelDraws(params, y, data, (2 * y - 1).reshape(num_draws, num_groups, rows_per_group).mean(-1))


def assert_same_means(before: dict, after: dict) -> None:
    """Each statistic's mean after a move equals its mean before, on the paired differences,
    within 4.5 Monte Carlo standard errors (the draws are independent)."""
    for name in before:
        difference = np.asarray(after[name] - before[name]).reshape(before[name].shape[0], -1)
        z_scores = difference.mean(0) / (difference.std(0) / math.sqrt(difference.shape[0]))
        assert np.all(np.abs(z_scores) < 4.5), (name, z_scores)


def moved(key, params: Params, times: int) -> Params:
    for k in jax.random.split(key, times):
        params, _ = jax.vmap(moves.interweave)(jax.random.split(k, params.alpha.shape[0]), params)
    return params


@pytest.fixture(scope="module")
def small_problem():
    data = hblogit.simulate(400, 20, 3, seed=4).dataset().astype(jnp.float64)
    return data, hblogit.init_params(jax.random.key(0), data, radius=1.0)


def test_interweave_keeps_the_centred_effects_and_claims_the_density_change(small_problem):
    data, params = small_problem
    after, claimed = moves.interweave(jax.random.key(1), params)
    before_c, after_c = model.constrain(params), model.constrain(after)
    np.testing.assert_allclose(params.alpha + before_c.alpha_group, after.alpha + after_c.alpha_group, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(params.beta + before_c.gamma_group, after.beta + after_c.gamma_group, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihood(after, data), model.log_likelihood(params, data), rtol=1e-12)
    density = hblogit.make_logdensity(data)
    np.testing.assert_allclose(density(after) - density(params), claimed, rtol=1e-9, atol=1e-9)
    assert not np.allclose(after.log_sigma_gamma, params.log_sigma_gamma)
    assert not np.allclose(after.beta, params.beta)


@pytest.mark.parametrize("rows, tolerance, passes", [(jnp.float64, 1e-9, 1), (jnp.float32, 1e-4, 3)])
def test_transport_claims_the_density_change_and_keeps_the_locations(small_problem, rows, tolerance, passes):
    """Float32 rows are the mixed precision: per-row work in float32, sums in float64, as in
    the model, so the claim agrees to float32 rounding of the 400 rows' terms."""
    data, params = small_problem
    data = data.astype(rows)
    sds = jnp.full(1 + data.num_covariates, 0.3)
    density = hblogit.make_logdensity(data)
    changed = 0
    for seed in range(5):
        after, claimed = moves.transport_scales(jax.random.key(seed), params, data, sds, passes=passes)
        np.testing.assert_allclose(density(after) - density(params), claimed, rtol=tolerance, atol=tolerance)
        np.testing.assert_array_equal(after.alpha, params.alpha)
        np.testing.assert_array_equal(after.beta, params.beta)
        changed += int(np.sum(np.asarray(after.log_sigma_gamma) != np.asarray(params.log_sigma_gamma)))
    assert changed > 0  # some proposals were accepted


def test_transported_map_is_its_own_inverse_with_the_right_jacobian():
    key_z, key_b, key_h = jax.random.split(jax.random.key(0), 3)
    z, b = jax.random.normal(key_z, (7,)), jax.random.normal(key_b, (7,))
    h = jnp.abs(jax.random.normal(key_h, (7,))) * jnp.array([0, 0.1, 1, 3, 10, 100, 1000])
    b = jnp.where(h > 0, b, 0.0)  # a group without rows has neither
    new_z, log_jacobian = moves.transported(z, 0.4, 0.7, b, h)
    back, back_log_jacobian = moves.transported(new_z, 0.7, 0.4, b, h)
    np.testing.assert_allclose(back, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back_log_jacobian, -log_jacobian, rtol=1e-12)
    jacobian = jax.jacobian(lambda z: moves.transported(z, 0.4, 0.7, b, h)[0])(z)
    np.testing.assert_allclose(jnp.linalg.slogdet(jacobian)[1], log_jacobian, rtol=1e-12)
    assert new_z[0] == z[0]  # a group without rows keeps its z, as the non-centred sampler would


def test_interweave_leaves_the_prior_invariant():
    """With no rows the posterior is the prior: exact prior draws, moved, must still be prior
    draws. Each statistic's mean is compared with its exact value within 4.5 Monte Carlo
    standard errors (the draws are independent)."""
    num_groups, num_covariates = 3, 2  # few groups: the move is large
    start = prior_draws(0, NUM_DRAWS, num_groups, num_covariates)
    after = moved(jax.random.key(1), start, times=3)
    sigma_alpha, sigma_gamma = jnp.exp(after.log_sigma_alpha), jnp.exp(after.log_sigma_gamma)
    half_normal_mean = math.sqrt(2 / math.pi)
    statistics = {  # name: (per-draw values, exact expectation under the prior)
        "alpha": (after.alpha, 0.0),
        "alpha^2": (after.alpha**2, model.PRIOR_SD_ALPHA**2),
        "beta": (after.beta, 0.0),
        "beta^2": (after.beta**2, model.PRIOR_SD_BETA**2),
        "sigma_alpha": (sigma_alpha, model.PRIOR_SD_SIGMA_ALPHA * half_normal_mean),
        "sigma_alpha^2": (sigma_alpha**2, model.PRIOR_SD_SIGMA_ALPHA**2),
        "sigma_gamma": (sigma_gamma, model.PRIOR_SD_SIGMA_GAMMA * half_normal_mean),
        "sigma_gamma^2": (sigma_gamma**2, model.PRIOR_SD_SIGMA_GAMMA**2),
        "z_alpha": (after.z_alpha, 0.0),
        "z_alpha^2": (after.z_alpha**2, 1.0),
        "z_gamma^2": (after.z_gamma**2, 1.0),
        "alpha z_alpha": (after.alpha[:, None] * after.z_alpha, 0.0),
    }
    for name, (values, expected) in statistics.items():
        values = np.asarray(values).reshape(NUM_DRAWS, -1)
        z_scores = (values.mean(0) - expected) / (values.std(0) / math.sqrt(NUM_DRAWS))
        assert np.all(np.abs(z_scores) < 4.5), (name, z_scores)
    # and the move did move: the scales decorrelate from their starting values
    correlation = np.corrcoef(np.asarray(start.log_sigma_gamma[:, 0]), np.asarray(after.log_sigma_gamma[:, 0]))[0, 1]
    assert correlation < 0.9


def test_interweave_refuses_a_single_group():
    params = prior_draws(0, 1, 1, 2)
    with pytest.raises(ValueError, match="at least 2 groups"):
        moves.interweave(jax.random.key(1), jax.tree.map(lambda p: p[0], params))


def test_nuts_with_both_moves_agrees_with_pymc_reference(reference):  # noqa: F811
    """The reference problem has 100 rows a group, where the transport is off by default
    (tests/test_fit.py checks that default); here it is on, as at the post's 10 rows."""
    idata = hblogit.fit(
        reference.data.dataset(), chains=4, warmup=300, draws=300, seed=5, progress=False, sampler_options={"transport": True}
    )
    assert_agrees_with_reference(idata, reference)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"interweave": "yes"}, "interweave"),
        ({"transport": 1}, "transport"),
        ({"transport_passes": 0}, "transport_passes"),
        ({"transport_passes": True}, "transport_passes"),
        ({"transport_passes": 2.5}, "transport_passes"),
    ],
)
def test_move_options_are_validated(options, match):
    with pytest.raises(ValueError, match=match):
        hblogit.samplers.get_sampler("nuts", **options)


@pytest.mark.parametrize("passes", [0, True, 2.5])
def test_transport_passes_are_validated_when_the_move_is_called_directly(small_problem, passes):
    data, params = small_problem
    with pytest.raises(ValueError, match="passes must be a positive integer"):
        moves.transport_scales(jax.random.key(0), params, data, jnp.ones(4), passes=passes)


def test_transport_asked_for_on_a_sharded_density_says_why(small_problem):
    from hblogit import runner, sharding

    data, _ = small_problem
    density = sharding.make_sharded_logdensity(data, 1)
    config = runner.RunConfig(chains=1, warmup=2, draws=2, progress=False, init_steps=0)
    with pytest.raises(ValueError, match="transport needs the data's rows on one device"):
        runner.run(hblogit.samplers.get_sampler("nuts", transport=True), density, config, dtype=jnp.float64)


def test_transport_leaves_the_joint_distribution_invariant():
    """Draw (parameters, y) from the model, move the scales given y: the pair must still be a
    draw from the model. Few groups and rows a group make the linearised likelihood that
    carries the z's rough, so a wrong correction would show (dropping the map's
    log-Jacobian fails this at 26 standard errors)."""
    draws = model_draws(3, 20_000, num_groups=4, rows_per_group=3)

    after = draws.moved(lambda key, params, data: moves.transport_scales(key, params, data, jnp.ones(2)), jax.random.key(5))
    moved = np.mean(np.asarray(after.log_sigma_alpha) != np.asarray(draws.params.log_sigma_alpha))
    assert 0.2 < moved < 0.99, moved  # it moves, and it rejects sometimes: the test has power

    def statistics(p):
        return {
            "log sigma_alpha": p.log_sigma_alpha,
            "log sigma_alpha^2": p.log_sigma_alpha**2,
            "log sigma_gamma": p.log_sigma_gamma[:, 0],
            "log sigma_gamma^2": p.log_sigma_gamma[:, 0] ** 2,
            "z_alpha^2": p.z_alpha**2,
            "sigma_alpha z_alpha (2y - 1)": jnp.exp(p.log_sigma_alpha)[:, None] * p.z_alpha * draws.residual,
            "z_gamma^2": p.z_gamma[..., 0] ** 2,
        }

    assert_same_means(statistics(draws.params), statistics(after))


@pytest.mark.parametrize("num_covariates", [2, 0])
def test_transport_draws_the_same_in_either_layout(num_covariates):
    """In the blocked layout the passes are sums over dense blocks (groups split into pieces,
    empty groups, one group longer than the widest block): the draws and claims are the
    segment layout's, to rounding. With no covariates the intercepts are the one family."""
    data = uneven_problem(3, num_groups=15, num_covariates=num_covariates, huge=40).astype(jnp.float64)
    blocked = block_dataset(data, max_blocks=3, max_width=4)
    assert blocked.extra_piece.shape[0] > 0
    params = hblogit.init_params(jax.random.key(1), data, radius=1.0)
    sds = jnp.full(1 + data.num_covariates, 0.5)
    density = hblogit.make_logdensity(data)
    moved = 0
    for seed in range(3):
        segment = moves.transport_scales(jax.random.key(seed), params, data, sds, passes=2)
        after, claimed = moves.transport_scales(jax.random.key(seed), params, blocked, sds, passes=2)
        for a, b in zip(jax.tree.leaves((after, claimed)), jax.tree.leaves(segment)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(density(after) - density(params), claimed, rtol=1e-9, atol=1e-9)
        moved += int(np.sum(np.asarray(moves.families(after).log_scale) != np.asarray(moves.families(params).log_scale)))
    assert moved > 0
