"""Properties of Dataset and the log-density on random small problems, by hypothesis.

Problems have 1-40 rows, 1-8 groups (empty groups included: a group count above the labels
drawn), 1-4 covariates, any group pattern and row order, and covariates in [-3, 3]; parameters
are drawn in the ranges a sampler visits. Each new (N, G, K) compiles the log-density again
(0.1-1 s), so the example counts are modest; the explicit examples pin the smallest problem
and groups with no rows.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import hblogit
from hblogit.model import Params, logdensity_autodiff
from tests import numpy_model

# Random columns are sometimes constant; that warning is tested in test_hostile.
pytestmark = pytest.mark.filterwarnings("ignore::hblogit.CovariateWarning")

LAYOUTS = ("segment", "blocked")


class Problem(NamedTuple):
    X: np.ndarray
    y: np.ndarray
    group_idx: np.ndarray
    num_groups: int

    def dataset(self) -> hblogit.Dataset:
        return hblogit.Dataset(self.X, self.y, self.group_idx, num_groups=self.num_groups)


def floats(low, high):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def problems(draw) -> Problem:
    num_obs = draw(st.integers(1, 40))
    num_groups = draw(st.integers(1, 8))
    num_covariates = draw(st.integers(1, 4))
    return Problem(
        X=draw(arrays(np.float64, (num_obs, num_covariates), elements=floats(-3, 3))),
        y=draw(arrays(np.int64, num_obs, elements=st.integers(0, 1))),
        group_idx=draw(arrays(np.int64, num_obs, elements=st.integers(0, num_groups - 1))),
        num_groups=num_groups,
    )


@st.composite
def problems_and_params(draw) -> tuple[Problem, Params]:
    """A problem and a float64 point: coefficients and z's in [-3, 3], log-scales in [-3, 1]."""
    problem = draw(problems())
    num_groups, num_covariates = problem.num_groups, problem.X.shape[1]
    block = lambda shape, low=-3.0, high=3.0: jnp.asarray(draw(arrays(np.float64, shape, elements=floats(low, high))))
    params = Params(
        alpha=block(()),
        beta=block((num_covariates,)),
        log_sigma_alpha=block((), -3.0, 1.0),
        log_sigma_gamma=block((num_covariates,), -3.0, 1.0),
        z_alpha=block((num_groups,)),
        z_gamma=block((num_groups, num_covariates)),
    )
    return problem, params


@st.composite
def problems_params_and_permutations(draw) -> tuple[Problem, Params, list[int]]:
    problem, params = draw(problems_and_params())
    return problem, params, draw(st.permutations(range(len(problem.y))))


def fixed_example(num_groups, group_idx, num_covariates=2) -> tuple[Problem, Params]:
    """A problem with the given groups and a fixed point, for ``@example``."""
    rng = np.random.default_rng(len(group_idx))
    num_obs = len(group_idx)
    problem = Problem(rng.normal(size=(num_obs, num_covariates)), rng.integers(0, 2, num_obs), np.array(group_idx), num_groups)
    params = hblogit.init_params(jax.random.key(0), problem.dataset(), radius=1.0)
    return problem, params


SMALLEST = fixed_example(1, [0], num_covariates=1)
EMPTY_GROUPS = fixed_example(8, [6, 2, 2, 6, 0, 6])  # groups 1, 3, 4, 5 and 7 have no rows


@settings(max_examples=60, deadline=None)
@given(problems())
@example(SMALLEST[0])
@example(EMPTY_GROUPS[0])
def test_dataset_sorts_rows_by_group_and_keeps_the_permutation(problem):
    """``order`` is a permutation, stable within groups; the rows, outcomes and groups are
    the caller's in that order; sizes and offsets describe each group's contiguous block."""
    dataset = problem.dataset()
    order = np.asarray(dataset.order)
    group_idx = np.asarray(dataset.group_idx)
    assert np.array_equal(np.sort(order), np.arange(len(problem.y)))
    np.testing.assert_array_equal(group_idx, problem.group_idx[order])
    assert np.all(np.diff(group_idx) >= 0)
    assert all(np.all(np.diff(order[group_idx == g]) > 0) for g in range(problem.num_groups))
    np.testing.assert_array_equal(np.asarray(dataset.X), problem.X[order])
    np.testing.assert_array_equal(np.asarray(dataset.y), problem.y[order])
    sizes = np.bincount(problem.group_idx, minlength=problem.num_groups)
    offsets = np.asarray(dataset.group_offsets)
    np.testing.assert_array_equal(np.asarray(dataset.group_sizes), sizes)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(sizes)]))
    for g in range(problem.num_groups):
        assert np.all(group_idx[offsets[g] : offsets[g + 1]] == g)
    assert (dataset.num_obs, dataset.num_groups, dataset.num_covariates) == (len(problem.y), problem.num_groups, problem.X.shape[1])


@settings(max_examples=25, deadline=None)
@given(problems_params_and_permutations(), st.sampled_from(LAYOUTS))
@example((*EMPTY_GROUPS, [5, 3, 0, 4, 1, 2]), "blocked")
def test_logdensity_is_invariant_to_row_order(problem_params_and_permutation, layout):
    """The same rows in another order give the same value to 1e-12 relative: only the order
    of the float64 sums changes, each of at most 40 terms of one sign (likelihood) or of a
    few dozen prior terms, whose rounding is ~40 * 1.1e-16 of the sum of magnitudes."""
    problem, params, permutation = problem_params_and_permutation
    permutation = np.array(permutation)
    shuffled = Problem(problem.X[permutation], problem.y[permutation], problem.group_idx[permutation], problem.num_groups)
    value = float(hblogit.make_logdensity(problem.dataset(), layout=layout)(params))
    shuffled_value = float(hblogit.make_logdensity(shuffled.dataset(), layout=layout)(params))
    assert np.isfinite(value)
    assert abs(shuffled_value - value) <= 1e-12 * abs(value)


@settings(max_examples=25, deadline=None)
@given(problems_and_params(), st.sampled_from(LAYOUTS))
@example(SMALLEST, "segment")
@example(EMPTY_GROUPS, "blocked")
def test_logdensity_is_the_prior_plus_each_groups_own_likelihood(problem_and_params, layout):
    """The value is the prior (SciPy) plus, for every group, the log-likelihood of its own
    rows under its own z's (NumPy; 0 for an empty group), to 1e-12 relative: two float64
    computations of the same sums (softplus against logaddexp), differing by rounding."""
    problem, params = problem_and_params
    value = float(hblogit.make_logdensity(problem.dataset(), layout=layout)(params))
    pieces = numpy_model.group_log_likelihoods(params, problem.X, problem.y, problem.group_idx, problem.num_groups)
    expected = numpy_model.log_prior(params) + pieces.sum()
    assert abs(value - expected) <= 1e-12 * abs(expected)


@jax.jit
def gradients_by_layout_and_autodiff(densities, params):
    """(value, gradient) of each density (hand-written gradient) and of JAX's autodiff of
    the first's dataset, in one compiled program per problem shape."""
    autodiff = jax.value_and_grad(logdensity_autodiff)(params, densities[0].dataset)
    return [jax.value_and_grad(density)(params) for density in densities], autodiff


@settings(max_examples=10, deadline=None)
@given(problems_and_params())
@example(SMALLEST)
@example(EMPTY_GROUPS)
def test_hand_written_gradient_equals_autodiff(problem_and_params):
    """In both layouts, every gradient block within 1e-10 of the largest entry of JAX's
    autodiff gradient, and the same value to 1e-12: both are float64 sums of the same
    per-row terms in another order, whose rounding is ~1e-14 of the scale."""
    problem, params = problem_and_params
    dataset = problem.dataset()
    densities = [hblogit.make_logdensity(dataset, layout=layout) for layout in LAYOUTS]
    by_layout, (auto_value, auto_grad) = gradients_by_layout_and_autodiff(densities, params)
    scale = max(float(jnp.max(jnp.abs(block))) for block in auto_grad)
    for layout, (value, grad) in zip(LAYOUTS, by_layout):
        assert abs(float(value - auto_value)) <= 1e-12 * abs(float(auto_value)), layout
        for name, ours, theirs in zip(Params._fields, grad, auto_grad):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * scale, err_msg=f"{layout}: {name}")
