"""hblogit.fused's kernel: what the tests on a CPU can say about it besides its values
(tests/test_layout.py checks those against the segment layout and PyMC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hblogit import fused


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_kernel_lowers_to_triton_for_the_post_shapes(dtype):
    """Triton's lowering (power-of-two shapes, supported ops) at the post's K = 20 and the
    widest block (32 rows), with a last tile only part full; the PTX compile needs the GPU."""
    K, width, pieces = 20, 32, 3 * fused.TILE + 5
    shapes = [jax.ShapeDtypeStruct(s, dtype) for s in [(pieces,), (K, pieces), (K, width, pieces), (width, pieces)]]
    module = fused.lowers_for_gpu(shapes)
    assert "xla.gpu.triton" in module


def test_kernel_sums_per_piece():
    """The kernel's three outputs against NumPy, piece by piece, across tile boundaries."""
    rng = np.random.default_rng(0)
    K, width, pieces = 3, 5, fused.TILE + 7
    X = rng.normal(size=(K, width, pieces))
    sign = rng.choice([-1.0, 0.0, 1.0], size=(width, pieces))  # 0: padding rows
    intercept, slopes = rng.normal(size=pieces), rng.normal(size=(K, pieces))
    log_p, S, T = fused.piece_sums(intercept, slopes, X, sign)
    eta = intercept + np.einsum("kmp,kp->mp", X, slopes)
    residual = -sign / (1 + np.exp(-sign * eta))
    np.testing.assert_allclose(log_p, np.sum(-np.logaddexp(0, sign * eta) * sign**2, axis=0), rtol=1e-12)
    np.testing.assert_allclose(S, residual.sum(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T, np.einsum("mp,kmp->kp", residual, X), rtol=1e-12, atol=1e-14)
