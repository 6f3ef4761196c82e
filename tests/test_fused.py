"""hblogit.fused's kernel: what the tests on a CPU can say about it besides its values
(tests/test_layout.py checks those against the segment layout and PyMC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hblogit import fused


@pytest.mark.parametrize("dtype, chains", [(jnp.float32, 0), (jnp.float64, 0), (jnp.float32, 4)])
def test_kernel_lowers_to_triton_for_the_post_shapes(dtype, chains):
    """Triton's lowering (power-of-two shapes, supported ops) at the post's K = 20 and the
    widest block (32 rows), with a last tile only part full, for one chain and for four
    vmapped; the PTX compile needs the GPU."""
    module = fused.lowers_for_gpu(kernel_arguments(width=32, chains=chains, dtype=dtype))
    assert module.count("xla.gpu.triton") == 1  # one kernel, whatever the chains


def kernel_arguments(width, chains, dtype, K=20, pieces=3 * fused.TILE + 5):
    """``piece_sums``'s arguments' shapes (vmapped over ``chains`` if any)."""
    batch = (chains,) if chains else ()
    shapes = [(*batch, pieces), (*batch, K, pieces), (K, width, pieces), (width, pieces)]
    return [jax.ShapeDtypeStruct(s, dtype) for s in shapes]


def test_kernel_does_not_grow_with_the_block_width():
    """The loop over a block's rows stays a loop in the Triton module: unrolled, the module
    was 5x larger at 32 rows than at 4 (K = 20, 4 chains), and its first compile on an H100
    had not ended after about 90 s."""
    at_4, at_32 = (len(fused.lowers_for_gpu(kernel_arguments(width, 4, jnp.float32))) for width in (4, 32))
    assert at_32 < 1.02 * at_4


@pytest.mark.parametrize("num_chains, per_program", [(8, 8), (24, 12)])
def test_vmap_over_chains_is_one_kernel_with_a_chain_axis(num_chains, per_program):
    """At K = 3, 8 chains share a program; 24 x 3 > MAX_CHAIN_COVARIATES, so 24 chains split
    over two programs of 12 along the grid's chain axis. Either way, equal per chain."""
    rng = np.random.default_rng(1)
    K, width, pieces = 3, 4, fused.TILE + 3
    X, sign = rng.normal(size=(K, width, pieces)), rng.choice([-1.0, 1.0], size=(width, pieces))
    intercepts, slopes = rng.normal(size=(num_chains, pieces)), rng.normal(size=(num_chains, K, pieces))
    batched = jax.jit(jax.vmap(fused.piece_sums, in_axes=(0, 0, None, None)))(intercepts, slopes, X, sign)
    assert fused.chains_per_program(num_chains, K) == per_program
    for c in range(num_chains):
        for got, want in zip(batched, fused.piece_sums(intercepts[c], slopes[c], X, sign)):
            np.testing.assert_allclose(got[c], want, rtol=1e-13, atol=1e-14)


def test_chains_per_program():
    assert fused.chains_per_program(8, 20) == 2  # 3 x 20 fits too, but 3 does not divide 8
    assert fused.chains_per_program(4, 4) == 4
    assert fused.chains_per_program(7, 20) == 1
    assert fused.chains_per_program(1, 100) == 1


def test_vmap_with_data_along_the_batch():
    """The rule's other branch: X differing along the batch (one kernel call per member)."""
    rng = np.random.default_rng(2)
    K, width, pieces = 2, 3, 10
    X = rng.normal(size=(2, K, width, pieces))
    sign = rng.choice([-1.0, 1.0], size=(width, pieces))
    intercepts, slopes = rng.normal(size=pieces), rng.normal(size=(K, pieces))
    batched = jax.vmap(fused.piece_sums, in_axes=(None, None, 0, None))(intercepts, slopes, X, sign)
    for b in range(2):
        for got, want in zip(batched, fused.piece_sums(intercepts, slopes, X[b], sign)):
            np.testing.assert_allclose(got[b], want, rtol=1e-13)


@pytest.mark.parametrize("K", [3, 0])
def test_kernel_sums_per_piece(K):
    """The kernel's three outputs against NumPy, piece by piece, across tile boundaries; with
    no covariates too (a zero covariate stands in for the empty X, which Pallas refuses)."""
    rng = np.random.default_rng(0)
    width, pieces = 5, fused.TILE + 7
    X = rng.normal(size=(K, width, pieces))
    sign = rng.choice([-1.0, 0.0, 1.0], size=(width, pieces))  # 0: padding rows
    intercept, slopes = rng.normal(size=pieces), rng.normal(size=(K, pieces))
    log_p, S, T = fused.piece_sums(intercept, slopes, X, sign)
    eta = intercept + np.einsum("kmp,kp->mp", X, slopes)
    residual = -sign / (1 + np.exp(-sign * eta))
    np.testing.assert_allclose(log_p, np.sum(-np.logaddexp(0, sign * eta) * sign**2, axis=0), rtol=1e-12)
    np.testing.assert_allclose(S, residual.sum(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T, np.einsum("mp,kmp->kp", residual, X), rtol=1e-12, atol=1e-14)
