"""The hand-written log-density and gradient against PyMC, finite differences and autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import hblogit
from hblogit.model import Params, log_likelihood, logdensity_autodiff
from tests.conftest import random_problem


def random_params(seed, dataset, scale=1.0):
    return jax.tree.map(lambda p: scale * p, hblogit.init_params(jax.random.key(seed), dataset, radius=1.0))


@pytest.fixture(scope="module")
def dataset(oracle_problem):
    p = oracle_problem
    return hblogit.Dataset(p["X"], p["y"], p["group_idx"], num_groups=p["num_groups"])


@pytest.mark.parametrize("seed", range(6))
def test_logdensity_matches_pymc(oracle_problem, dataset, seed):
    from reference.model import params_to_point

    params = random_params(seed, dataset)
    ours = float(hblogit.make_logdensity(dataset)(params))
    ref = float(oracle_problem["logp"](params_to_point(params)))
    assert abs(ours - ref) / abs(ref) <= 1e-10


@pytest.mark.parametrize("seed", range(6))
def test_gradient_matches_pymc(oracle_problem, dataset, seed):
    from reference.model import params_to_point, split_gradient

    params = random_params(seed, dataset)
    ours = jax.grad(hblogit.make_logdensity(dataset))(params)
    ref = split_gradient(oracle_problem["model"], oracle_problem["dlogp"](params_to_point(params)))
    scale = max(np.max(np.abs(v)) for v in ref.values())
    for name, value in ref.items():
        err = np.max(np.abs(np.asarray(getattr(ours, name)) - value))
        assert err / scale <= 1e-8, name


def test_gradient_against_finite_differences(dataset):
    params = random_params(7, dataset)
    check_grads(hblogit.make_logdensity(dataset), (params,), order=1, modes=("rev",), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_gradient_equals_autodiff(dataset):
    params = random_params(8, dataset)
    ours = jax.grad(hblogit.make_logdensity(dataset))(params)
    auto = jax.grad(lambda p: logdensity_autodiff(p, dataset))(params)
    for a, b in zip(ours, auto):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_value_and_grad_under_vmap_matches_single(dataset):
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *(random_params(s, dataset) for s in range(3)))
    values, grads = jax.vmap(jax.value_and_grad(hblogit.make_logdensity(dataset)))(batch)
    for c in range(3):
        single = jax.tree.map(lambda x: x[c], batch)
        v, g = jax.value_and_grad(hblogit.make_logdensity(dataset))(single)
        np.testing.assert_allclose(values[c], v, rtol=1e-13)
        for a, b in zip(jax.tree.map(lambda x: x[c], grads), g):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_float32_agrees_with_float64():
    """Float32 data and parameters: value within 1e-6 relative, gradient within 1e-4 of its scale."""
    X, y, g = random_problem(3, num_obs=5000, num_groups=200, num_covariates=20)
    ds64 = hblogit.Dataset(X, y, g)
    ds32 = hblogit.Dataset(X.astype(np.float32), y, g)
    p64 = random_params(0, ds64)
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p64)
    v64, g64 = jax.value_and_grad(hblogit.make_logdensity(ds64))(p64)
    v32, g32 = jax.value_and_grad(hblogit.make_logdensity(ds32))(p32)
    assert v32.dtype == jnp.float32 and g32.z_gamma.dtype == jnp.float32
    assert abs(float(v32) - float(v64)) / abs(float(v64)) < 1e-6
    scale = max(float(jnp.max(jnp.abs(x))) for x in g64)
    for a, b in zip(g32, g64):
        assert float(jnp.max(jnp.abs(a - b))) / scale < 1e-4


def test_mixed_precision_keeps_parameter_dtype():
    """Float64 parameters over float32 data: float64 value and gradient, close to all-float64."""
    X, y, g = random_problem(4, num_obs=2000, num_groups=50, num_covariates=5)
    mixed = hblogit.Dataset(X.astype(np.float32), y, g)
    full = hblogit.Dataset(X.astype(np.float32).astype(np.float64), y, g)
    params = random_params(1, full)
    vm, gm = jax.value_and_grad(hblogit.make_logdensity(mixed))(params)
    vf, gf = jax.value_and_grad(hblogit.make_logdensity(full))(params)
    assert vm.dtype == jnp.float64 and all(x.dtype == jnp.float64 for x in gm)
    assert abs(float(vm - vf)) / abs(float(vf)) < 1e-6


def test_row_order_does_not_matter():
    X, y, g = random_problem(5, num_obs=300, num_groups=10, num_covariates=4)
    perm = np.random.default_rng(0).permutation(len(y))
    ds = hblogit.Dataset(X, y, g, num_groups=10)
    ds_perm = hblogit.Dataset(X[perm], y[perm], g[perm], num_groups=10)
    params = random_params(2, ds)
    v, grad = jax.value_and_grad(hblogit.make_logdensity(ds))(params)
    vp, grad_p = jax.value_and_grad(hblogit.make_logdensity(ds_perm))(params)
    np.testing.assert_allclose(v, vp, rtol=1e-13)
    for a, b in zip(grad, grad_p):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_huge_linear_predictor(dtype):
    """Rows with |eta| = 1000: -softplus(1000) = -1000 for a wrong outcome, 0 for a right one."""
    X = np.array([[1.0], [1.0], [-1.0], [-1.0]], dtype=dtype)
    y = np.array([1, 0, 1, 0])
    ds = hblogit.Dataset(X, y, np.zeros(4, dtype=int))
    pdt = jnp.float64 if dtype == np.float64 else jnp.float32
    params = Params(*(jnp.asarray(v, pdt) for v in (0.0, [1000.0], 0.0, [0.0], [0.0], [[0.0]])))
    value, grad = jax.value_and_grad(lambda p: log_likelihood(p, ds))(params)
    assert np.isfinite(float(value)) and float(value) == pytest.approx(-2000.0, rel=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in grad)
    # d/d beta = sum_i x_i (y_i - sigmoid(eta_i)) = 1*0 + 1*(-1) + (-1)*1 + (-1)*0 = -2
    assert float(grad.beta[0]) == pytest.approx(-2.0)
    total = hblogit.make_logdensity(ds)(params)
    assert np.isfinite(float(total))


def test_logdensity_traces_once_per_shape():
    from hblogit.model import _logdensity_jit

    X, y, g = random_problem(9, num_obs=123, num_groups=7, num_covariates=2)
    X2, y2, g2 = random_problem(10, num_obs=123, num_groups=7, num_covariates=2)
    ds1 = hblogit.Dataset(X, y, g, num_groups=7)
    ds2 = hblogit.Dataset(X2, y2, g2, num_groups=7)
    params = random_params(0, ds1)
    before = _logdensity_jit._cache_size()
    for ds in (ds1, ds2, ds1):
        hblogit.make_logdensity(ds)(params)
    assert _logdensity_jit._cache_size() == before + 1


def test_constrained_view(dataset):
    params = random_params(3, dataset)
    c = hblogit.constrain(params)
    np.testing.assert_allclose(c.sigma_gamma, np.exp(params.log_sigma_gamma))
    np.testing.assert_allclose(c.gamma_group, np.exp(params.log_sigma_gamma) * params.z_gamma)
    np.testing.assert_allclose(c.alpha_group, np.exp(params.log_sigma_alpha) * params.z_alpha)


def test_converters_round_trip(dataset):
    from reference.model import params_to_point, point_to_params

    params = random_params(4, dataset)
    back = point_to_params(params_to_point(params))
    for a, b in zip(params, back):
        np.testing.assert_array_equal(a, b)


def test_padding_rows_add_nothing_to_any_form_of_the_likelihood():
    """A padding row (y = 1/2, as hblogit.sharding pads shards) adds nothing to the value, the
    gradient or the information, in every function that sums over rows."""
    import equinox as eqx

    from hblogit.model import group_terms, likelihood_information, log_likelihood_of_eta

    X, y, g = random_problem(11, num_obs=60, num_groups=6, num_covariates=3)
    real = hblogit.Dataset(X, y, g)
    padded = hblogit.Dataset(np.concatenate([X, X[:5]]), np.concatenate([y, y[:5]]), np.concatenate([g, g[:5]]))
    is_copy = np.zeros(65, bool)
    is_copy[np.argsort(np.asarray(padded.order))[60:]] = True  # where the five copied rows sit after sorting
    padded = eqx.tree_at(lambda d: d.y, padded, jnp.where(is_copy, 0.5, padded.y))
    params = hblogit.make_logdensity(real).init_params(jax.random.PRNGKey(0))
    eta = hblogit.model._linear_predictor(params, padded)
    np.testing.assert_allclose(
        log_likelihood_of_eta(eta, padded, jnp.float64),
        log_likelihood_of_eta(hblogit.model._linear_predictor(params, real), real, jnp.float64),
        rtol=1e-12,
    )
    np.testing.assert_allclose(log_likelihood(params, padded), log_likelihood(params, real), rtol=1e-12)
    for ours, theirs in zip(jax.grad(log_likelihood)(params, padded), jax.grad(log_likelihood)(params, real)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(likelihood_information(params, padded), likelihood_information(params, real)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(group_terms(params, padded), group_terms(params, real)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
