"""hblogit.small_linalg: the unrolled factorisation and solves equal the library's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hblogit import small_linalg


def positive_definite(rng, batch, n, asymmetry=0.0):
    """I + B B^T, plus an asymmetric perturbation of relative size ``asymmetry``."""
    B = rng.normal(size=(batch, n, n + 2))
    A = np.eye(n) + B @ np.swapaxes(B, -1, -2)
    return A * (1 + asymmetry * rng.normal(size=A.shape))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_unrolled_cholesky_equals_the_library(n):
    """Also where the matrix is symmetric only to rounding (as one summed from float32 rows):
    both factor its symmetric part."""
    A = jnp.asarray(positive_definite(np.random.default_rng(n), 50, n, asymmetry=1e-7))
    unrolled = jax.jit(lambda a: small_linalg.cholesky(a, "unrolled"))(A)
    np.testing.assert_allclose(unrolled, small_linalg.cholesky(A), rtol=1e-12, atol=1e-12)
    assert np.all(np.triu(np.asarray(unrolled), 1) == 0)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("columns", [1, 2])
def test_unrolled_solves_equal_the_library(transpose, columns):
    rng = np.random.default_rng(columns)
    L = small_linalg.cholesky(jnp.asarray(positive_definite(rng, 40, 6)))
    v = jnp.asarray(rng.normal(size=(40, 6, columns)))
    unrolled = jax.jit(lambda L, v: small_linalg.solve_lower(L, v, transpose=transpose, linalg="unrolled"))(L, v)
    np.testing.assert_allclose(unrolled, small_linalg.solve_lower(L, v, transpose=transpose), rtol=1e-12, atol=1e-12)
    product = jnp.swapaxes(L, -1, -2) if transpose else L
    np.testing.assert_allclose(product @ unrolled, v, rtol=1e-12, atol=1e-12)


def test_a_matrix_not_positive_definite_gives_nan_either_way():
    A = jnp.asarray([[[1.0, 2.0], [2.0, 1.0]], [[2.0, 0.0], [0.0, 3.0]]])
    for linalg in small_linalg.LINALG:
        factor = np.asarray(small_linalg.cholesky(A, linalg))
        assert np.isnan(factor[0]).any() and np.isfinite(factor[1]).all(), linalg


def test_unknown_linalg_is_refused():
    with pytest.raises(ValueError, match="linalg must be one of 'library', 'unrolled', got 'lapack'"):
        small_linalg.cholesky(jnp.eye(2), "lapack")
