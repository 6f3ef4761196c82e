"""simulate() against the post's generator, and Dataset validation."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import hblogit


def post_generator(N, G, K, seed):
    """The post's code, restated line by line."""
    rng = np.random.default_rng(seed)
    group_idx = rng.integers(0, G, size=N, dtype=np.int64)
    X = rng.normal(size=(N, K)).astype(np.float32)
    a_true = np.float32(-1.0)
    b_true = rng.normal(0.0, 0.45, size=K).astype(np.float32)
    s_a_true = np.float32(0.80)
    s_g_true = rng.uniform(0.15, 0.35, size=K).astype(np.float32)
    a_group = rng.normal(0.0, s_a_true, size=G).astype(np.float32)
    g_group = rng.normal(0.0, s_g_true, size=(G, K)).astype(np.float32)
    eta = a_true + a_group[group_idx] + np.sum(X * (b_true + g_group[group_idx]), axis=1)
    p = 1.0 / (1.0 + np.exp(-eta))
    y = rng.binomial(1, p).astype(np.int64)
    return X, y, group_idx, (a_true, b_true, s_a_true, s_g_true, a_group, g_group)


@pytest.mark.parametrize("N,G,K,seed", [(1000, 50, 3, 1), (20_000, 1000, 20, 827), (7, 3, 1, 5)])
def test_simulate_matches_post_generator(N, G, K, seed):
    sim = hblogit.simulate(num_obs=N, num_groups=G, num_covariates=K, seed=seed)
    X, y, g, truth = post_generator(N, G, K, seed)
    np.testing.assert_array_equal(sim.X, X)
    np.testing.assert_array_equal(sim.y, y)
    np.testing.assert_array_equal(sim.group_idx, g)
    assert sim.X.dtype == np.float32 and set(np.unique(sim.y)) <= {0, 1}
    for ours, theirs in zip(sim.truth, truth):
        np.testing.assert_array_equal(ours, theirs)
    assert sim.truth.alpha_group.shape == (G,) and sim.truth.gamma_group.shape == (G, K)


def test_simulate_full_size_is_the_posts():
    sim = hblogit.simulate()
    assert sim.X.shape == (1_000_000, 20)
    assert float(np.mean(sim.y)) == pytest.approx(0.359275, abs=1e-12)
    digest = hashlib.sha256(sim.y.astype(np.int64).tobytes()).hexdigest()
    assert digest == "94537b728af8570814e9cd9480bde7cefa6d986166ff2fe37dd6f8b5b042e640"


def test_dataset_sorts_by_group_and_keeps_permutation():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, size=50)
    X = rng.normal(size=(50, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=50)
    ds = hblogit.Dataset(X, y, g, num_groups=6)
    order = np.asarray(ds.order)
    np.testing.assert_array_equal(order, np.argsort(g, kind="stable"))
    np.testing.assert_array_equal(np.asarray(ds.X), X[order])
    np.testing.assert_array_equal(np.asarray(ds.group_idx), g[order])
    assert np.all(np.diff(np.asarray(ds.group_idx)) >= 0)
    np.testing.assert_array_equal(np.asarray(ds.group_sizes), np.bincount(g, minlength=6))
    np.testing.assert_array_equal(np.asarray(ds.group_offsets), np.concatenate([[0], np.cumsum(np.bincount(g, minlength=6))]))
    assert ds.num_groups == 6 and int(ds.group_sizes[5]) == 0
    assert ds.X.dtype == np.float32 and ds.num_params == 2 + 4 + 6 * 3


def test_dataset_keeps_float64_and_converts_other_dtypes():
    g = np.array([0, 1])
    X = np.array([[1.0], [2.0]])  # not constant, which would warn
    assert hblogit.Dataset(X, [0, 1], g).X.dtype == np.float64
    assert hblogit.Dataset(X.astype(np.int32), [0, 1], g).X.dtype == np.float32
    assert hblogit.Dataset(X.astype(np.float16), np.array([True, False]), g).X.dtype == np.float32


def test_float64_X_is_not_rounded_when_x64_is_off():
    """In a fresh process (x64 off, as JAX starts) a float64 X keeps its digits."""
    code = (
        "import numpy as np, hblogit; X = np.array([[1 / 3], [2.0]]); "
        "ds = hblogit.Dataset(X, [0, 1], [0, 1]); "
        "assert ds.X.dtype == np.float64 and float(ds.X[0, 0]) == 1 / 3, (ds.X.dtype, float(ds.X[0, 0]))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_ENABLE_X64": "0"}, timeout=300)


@pytest.mark.parametrize(
    "change, what",
    [
        (dict(num_obs=1e3), "a positive integer"),
        (dict(num_groups=0), "a positive integer"),
        (dict(num_covariates=True), "an integer >= 0"),
        (dict(num_covariates=-1), "an integer >= 0"),
    ],
)
def test_simulate_refuses_sizes_that_are_not_integers_in_range(change, what):
    name, value = next(iter(change.items()))
    with pytest.raises(ValueError, match=f"{name} must be {what}, got {value!r}"):
        hblogit.simulate(**{**dict(num_obs=100, num_groups=10, num_covariates=2), **change})


def test_simulate_without_covariates_draws_random_intercepts_only():
    sim = hblogit.simulate(num_obs=100, num_groups=10, num_covariates=0, seed=1)
    assert sim.X.shape == (100, 0) and sim.truth.gamma_group.shape == (10, 0)
    dataset = sim.dataset()
    assert dataset.num_covariates == 0 and dataset.num_params == 2 + 10


def test_dataset_is_a_pytree_that_crosses_jit():
    import jax

    ds = hblogit.Dataset(np.arange(6.0).reshape(3, 2), [0, 1, 1], [0, 0, 1])
    total = jax.jit(lambda d: d.X.sum() + d.num_groups)(ds)
    assert float(total) == 17.0


GOOD = dict(X=np.ones((4, 2)), y=np.array([0, 1, 1, 0]), group_idx=np.array([0, 1, 1, 2]))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(X=np.array([[1.0, np.nan]] * 4)), "X has 1 non-finite|X has 4 non-finite"),
        (dict(X=np.array([[1.0, np.inf]] * 4)), "non-finite"),
        (dict(X=np.ones(4)), "X must be 2-D"),
        (dict(X=np.ones((4, 2, 1))), "X must be 2-D"),
        (dict(y=np.array([0, 1, 2, 0])), "y must be all 0 or 1"),
        (dict(y=np.array([0, 1, 0.5, 0])), "y must be all 0 or 1"),
        (dict(y=np.array([0, 1, -1, 0])), "y must be all 0 or 1"),
        (dict(group_idx=np.array([0.0, 1.0, 1.0, 2.0])), "group_idx must be integers"),
        (dict(group_idx=np.array(["a", "b", "b", "c"])), "group_idx must be integers"),
        (dict(group_idx=np.array([0, -1, 1, 2])), "group_idx must be non-negative"),
        (dict(group_idx=np.array([0, 1, 1, 5]), num_groups=3), "group_idx must be < num_groups"),
        (dict(y=np.array([0, 1, 1])), "lengths differ"),
        (dict(group_idx=np.array([0, 1])), "lengths differ"),
        (dict(X=np.ones((0, 2)), y=np.array([], dtype=int), group_idx=np.array([], dtype=int)), "no rows"),
        (dict(num_groups=3.0), "num_groups must be a positive integer"),
        (dict(covariate_names=["dose", "dose"]), "covariate_names repeats 'dose'"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(change, match):
    args = {**GOOD, **change}
    with pytest.raises(ValueError, match=match):
        hblogit.Dataset(
            args["X"], args["y"], args["group_idx"], num_groups=args.get("num_groups"), covariate_names=args.get("covariate_names")
        )
