"""The blocked layout, summed by XLA and by hblogit.fused's kernel, against the segment-sum
layout, PyMC, and its own widths."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hblogit
from hblogit.layout import BlockedDataset, block_dataset, block_widths
from hblogit.model import choose_layout, logdensity
from tests.conftest import random_problem


def random_params(seed, dataset):
    return hblogit.init_params(jax.random.key(seed), dataset, radius=1.0)


def uneven_problem(seed, num_groups, num_covariates, huge=300):
    """Poisson group sizes plus one huge group, one singleton, and two empty groups (one last)."""
    rng = np.random.default_rng(seed)
    sizes = rng.poisson(5, size=num_groups)
    sizes[[0, 1, 2, -1]] = (huge, 1, 0, 0)
    group_idx = rng.permutation(np.repeat(np.arange(num_groups), sizes))
    X = rng.normal(size=(len(group_idx), num_covariates))
    y = rng.integers(0, 2, size=len(group_idx))
    return hblogit.Dataset(X, y, group_idx, num_groups=num_groups)


value_and_grad = jax.jit(jax.value_and_grad(logdensity))


def assert_same_value_and_grad(params, data_a, data_b, rtol=1e-12):
    va, ga = value_and_grad(params, data_a)
    vb, gb = value_and_grad(params, data_b)
    np.testing.assert_allclose(va, vb, rtol=rtol)
    scale = max(float(jnp.max(jnp.abs(x))) for x in ga)
    for name, a, b in zip(hblogit.Params._fields, ga, gb):
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(max_blocks=1), dict(max_blocks=8, max_width=7), dict(max_blocks=2, max_width=1)],
    ids=["default", "one-block", "split-groups", "one-row-pieces"],
)
@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_blocked_equals_segment(options, fused):
    """Both ways of summing the blocks: XLA's, and hblogit.fused's kernel (interpreted here)."""
    dataset = uneven_problem(0, num_groups=61, num_covariates=3)
    assert_same_value_and_grad(random_params(0, dataset), dataset, block_dataset(dataset, **options, fused=fused))


@pytest.mark.parametrize("num_groups, num_covariates", [(1, 3), (40, 1), (7, 20)])
@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_blocked_equals_segment_edge_shapes(num_groups, num_covariates, fused):
    X, y, g = random_problem(1, num_obs=90, num_groups=num_groups, num_covariates=num_covariates, empty_group=False)
    dataset = hblogit.Dataset(X, y, g, num_groups=num_groups)
    assert_same_value_and_grad(random_params(1, dataset), dataset, block_dataset(dataset, fused=fused))


@pytest.mark.parametrize("layout", ["blocked", "fused"])
def test_blocked_matches_pymc(oracle_problem, layout):
    from reference.model import params_to_point, split_gradient

    p = oracle_problem
    dataset = hblogit.Dataset(p["X"], p["y"], p["group_idx"], num_groups=p["num_groups"])
    logdensity_blocked = hblogit.make_logdensity(dataset, layout=layout)
    assert isinstance(logdensity_blocked.data, BlockedDataset) and logdensity_blocked.data.fused == (layout == "fused")
    for seed in range(3):
        params = random_params(seed, dataset)
        value, grad = jax.value_and_grad(logdensity_blocked)(params)
        ref_value = float(p["logp"](params_to_point(params)))
        assert abs(float(value) - ref_value) / abs(ref_value) <= 1e-10
        ref = split_gradient(p["model"], p["dlogp"](params_to_point(params)))
        scale = max(np.max(np.abs(v)) for v in ref.values())
        for name, expected in ref.items():
            assert np.max(np.abs(np.asarray(getattr(grad, name)) - expected)) / scale <= 1e-8, name


@pytest.mark.parametrize("layout", ["blocked", "fused"])
def test_blocked_under_vmap_matches_single(layout):
    dataset = uneven_problem(2, num_groups=30, num_covariates=2)
    f = hblogit.make_logdensity(dataset, layout=layout)
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *(random_params(s, dataset) for s in range(3)))
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(f)))(batch)
    for c in range(3):
        v, g = jax.value_and_grad(f)(jax.tree.map(lambda x: x[c], batch))
        np.testing.assert_allclose(values[c], v, rtol=1e-13)
        for a, b in zip(jax.tree.map(lambda x: x[c], grads), g):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params_dtype", [jnp.float32, jnp.float64], ids=["float32", "mixed"])
@pytest.mark.parametrize("fused", [False, True], ids=["xla", "fused"])
def test_blocked_keeps_dtype_policy(params_dtype, fused):
    """Float32 data: float32 per-row work, value and gradient in the parameters' dtype."""
    dataset = uneven_problem(3, num_groups=50, num_covariates=4)
    data32 = hblogit.Dataset(np.asarray(dataset.X, np.float32), dataset.y, dataset.group_idx, num_groups=50)
    params = jax.tree.map(lambda x: x.astype(params_dtype), random_params(3, dataset))
    blocked = block_dataset(data32, fused=fused)
    assert blocked.blocks[0].X.dtype == jnp.float32
    value, grad = value_and_grad(params, blocked)
    assert value.dtype == params_dtype and all(x.dtype == params_dtype for x in grad)
    assert_same_value_and_grad(params, data32, blocked, rtol=1e-5)


def brute_force_padding(sizes, max_blocks):
    """The least padded rows over every choice of at most max_blocks widths."""
    distinct = np.unique(sizes)
    best = np.inf
    for count in range(1, max_blocks + 1):
        for widths in itertools.combinations(distinct, count):
            if widths[-1] == distinct[-1]:
                best = min(best, padded_rows(sizes, np.array(widths)))
    return best


def padded_rows(sizes, widths):
    return int(np.sum(widths[np.searchsorted(widths, sizes)]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_blocks", [1, 2, 3])
def test_block_widths_minimise_padding(seed, max_blocks):
    sizes = np.random.default_rng(seed).integers(1, 12, size=40)
    widths = block_widths(sizes, max_blocks)
    assert len(widths) <= max_blocks and widths[-1] == sizes.max()
    assert padded_rows(sizes, widths) == brute_force_padding(sizes, max_blocks)


def test_choose_layout():
    small = hblogit.Dataset(*random_problem(4, num_obs=50, num_groups=5, num_covariates=2))
    assert choose_layout(small) == "segment"  # small data keeps shape-stable compilations
    assert choose_layout(small, "blocked") == "blocked"
    assert choose_layout(small, "segment") == "segment"
    assert choose_layout(small, "fused") == "fused"  # by name only
    with pytest.raises(ValueError, match="layout"):
        choose_layout(small, "dense")
