"""The gibbs sampler's pieces: each group's likelihood terms in both layouts, and the
refresh of the effects (exact, claiming the density change it makes). Its draws against the
PyMC reference and its gradient counts are checked with every sampler's, in test_samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hblogit
from hblogit import model, moves
from hblogit.layout import block_dataset
from tests.test_layout import uneven_problem
from tests.test_moves import assert_same_means, model_draws

LAYOUTS = {
    "segment": lambda data: data,
    "blocked": lambda data: block_dataset(data, max_blocks=3, max_width=4),  # groups split over pieces
}


@pytest.fixture(scope="module")
def uneven():
    """Groups of 0 to 40 rows; coefficients equal to z (locations 0, scales 1)."""
    data = uneven_problem(3, num_groups=15, num_covariates=2, huge=40).astype(jnp.float64)
    params = hblogit.init_params(jax.random.key(1), data, radius=1.0)
    zero = jnp.zeros((), jnp.float64)
    return data, params._replace(alpha=zero, beta=0 * params.beta, log_sigma_alpha=zero, log_sigma_gamma=0 * params.beta)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_group_terms_are_each_groups_likelihood_and_its_derivatives(uneven, layout):
    """Against JAX's derivatives of the whole likelihood in the per-group coefficients: its
    gradient is the groups' gradients, its Hessian block-diagonal with minus the groups'
    information on the diagonal."""
    data, params = uneven
    terms = model.group_terms(params, LAYOUTS[layout](data))

    def log_likelihood(coefficients):
        z = coefficients.reshape(params.z_alpha.shape[0], -1)
        return model.log_likelihood_autodiff(params._replace(z_alpha=z[:, 0], z_gamma=z[:, 1:]), data)

    coefficients = jnp.concatenate([params.z_alpha[:, None], params.z_gamma], axis=1)
    num_groups, size = coefficients.shape
    hessian = jax.hessian(log_likelihood)(coefficients.reshape(-1)).reshape(num_groups, size, num_groups, size)
    np.testing.assert_allclose(jnp.sum(terms.log_likelihood), log_likelihood(coefficients.reshape(-1)), rtol=1e-12)
    np.testing.assert_allclose(terms.gradient.reshape(-1), jax.grad(log_likelihood)(coefficients.reshape(-1)), atol=1e-12)
    np.testing.assert_allclose(terms.information, -jnp.einsum("gigj->gij", hessian), atol=1e-12)
    off_diagonal = hessian * (1 - jnp.eye(num_groups))[:, None, :, None]
    np.testing.assert_array_equal(off_diagonal, 0)
    rows = np.bincount(np.asarray(data.group_idx), minlength=num_groups)
    np.testing.assert_array_equal(np.asarray(terms.information[rows == 0]), 0)
    segment_sum = jax.ops.segment_sum(-jax.nn.softplus((1 - 2 * data.y) * model._linear_predictor(params, data)), data.group_idx, num_groups)
    np.testing.assert_allclose(terms.log_likelihood, segment_sum, atol=1e-12)


@pytest.fixture(scope="module", params=[3, 0], ids=["K=3", "K=0"])
def simulated(request):
    """K = 0: random intercepts only, every group's system 1 x 1."""
    return hblogit.simulate(400, 20, request.param, seed=4).dataset().astype(jnp.float64)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_refresh_claims_the_density_change_and_keeps_the_globals(simulated, layout):
    data = simulated
    params = hblogit.init_params(jax.random.key(0), data, radius=1.0)
    density = hblogit.make_logdensity(data)
    after, claimed = moves.refresh_effects(jax.random.key(1), params, LAYOUTS[layout](data), newton_steps=2)
    np.testing.assert_allclose(density(after) - density(params), claimed, rtol=1e-9, atol=1e-9)
    for name in ("alpha", "beta", "log_sigma_alpha", "log_sigma_gamma"):
        np.testing.assert_array_equal(getattr(after, name), getattr(params, name))
    assert np.mean(np.asarray(after.z_alpha) != np.asarray(params.z_alpha)) > 0.5  # most groups moved


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_refresh_with_unrolled_linalg_draws_what_the_library_draws(simulated, layout):
    data = simulated
    params = hblogit.init_params(jax.random.key(0), data, radius=1.0)
    library, unrolled = (
        moves.refresh_effects(jax.random.key(1), params, LAYOUTS[layout](data), newton_steps=2, linalg=linalg)
        for linalg in ("library", "unrolled")
    )
    for got, want in zip(jax.tree.leaves(unrolled), jax.tree.leaves(library)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [0, True, 1.5])
def test_newton_steps_are_validated(steps):
    with pytest.raises(ValueError, match="newton_steps must be a positive integer"):
        hblogit.samplers.get_sampler("gibbs", newton_steps=steps)


def test_linalg_is_validated():
    with pytest.raises(ValueError, match="linalg must be one of"):
        hblogit.samplers.get_sampler("gibbs", linalg="lapack")


def test_refresh_leaves_the_joint_distribution_invariant():
    """Draw (parameters, y) from the model, refresh z given y: the pair must still be a draw
    from the model. Few rows a group and a wide prior make the Laplace proposal rough, so an
    uncorrected proposal would show (dropping the proposal's correction, in whole or in
    half, fails this)."""
    draws = model_draws(0, 20_000, num_groups=3, rows_per_group=4)

    after = draws.moved(moves.refresh_effects, jax.random.key(2))
    moved = np.mean(np.asarray(after.z_alpha) != np.asarray(draws.params.z_alpha))
    assert 0.3 < moved < 0.99, moved  # it moves, and it rejects sometimes: the test has power

    def statistics(p):
        return {
            "z_alpha": p.z_alpha,
            "z_alpha^2": p.z_alpha**2,
            "z_gamma^2": p.z_gamma[..., 0] ** 2,
            "z_alpha (2y - 1)": p.z_alpha * draws.residual,
            "z_gamma x (2y - 1)": p.z_gamma[..., 0] * draws.residual,
        }

    assert_same_means(statistics(draws.params), statistics(after))


@pytest.mark.parametrize("simulated", [3], indirect=True)  # one K: the refusal is the same for any
def test_gibbs_on_a_sharded_density_says_why(simulated):
    from hblogit import runner, sharding

    density = sharding.make_sharded_logdensity(simulated, 1)
    config = runner.RunConfig(chains=1, warmup=2, draws=2, progress=False, init_steps=0)
    with pytest.raises(ValueError, match="gibbs needs the data's rows on one device"):
        runner.run(hblogit.samplers.get_sampler("gibbs"), density, config, dtype=jnp.float64)


@pytest.mark.parametrize(
    "backend, num_params, nuts_sequential, gibbs_sequential",
    [("cpu", 10, True, True), ("gpu", 10, False, False), ("gpu", 2_100_042, True, False)],
)
def test_auto_chain_method_per_backend(monkeypatch, backend, num_params, nuts_sequential, gibbs_sequential):
    """nuts goes sequential on a GPU from SEQUENTIAL_MIN_PARAMS_GPU parameters (its U-turn
    checkpoints); gibbs's trees are over the globals alone, so it stays vmapped there."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    position = jnp.zeros((4, num_params))
    assert hblogit.samplers.get_sampler("nuts").sequential(position) == nuts_sequential
    assert hblogit.samplers.get_sampler("gibbs").sequential(position) == gibbs_sequential
    for method in ("vmap", "sequential"):
        assert hblogit.samplers.get_sampler("gibbs", chain_method=method).sequential(position) == (method == "sequential")
