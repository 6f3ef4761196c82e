"""Cholesky factors and triangular solves of many small matrices (one per group), two ways.

``"library"``: ``jnp.linalg.cholesky`` and ``jax.scipy.linalg.solve_triangular``. On a CPU
XLA runs them as a loop of LAPACK calls, one matrix at a time (3-5 us for a 21 x 21 one);
on a GPU, as cuSOLVER's and cuBLAS's batched routines.

``"unrolled"``: every entry of the factor (Cholesky-Crout) and of the solution (forward or
back substitution) written out as an elementwise expression over the batch, about n^3 / 6
multiply-adds for the factor. XLA can fuse these into a few kernels that read each matrix
once, which is what a GPU wants for 100,000 matrices of 21 x 21; batched library routines
for matrices this small have a history of being slow there. On a CPU it is slower than
LAPACK (a 4-chain factorisation at the post's size: 2.2 s against 1.3 s) and compiles in
seconds rather than instantly. Its speed on a GPU is measured by
experiments/bench_gibbs_step.py; ``gibbs``'s option ``linalg`` picks it.

Both read the symmetric part of the matrix, (A + A^T) / 2, as ``jnp.linalg.cholesky`` does:
a matrix summed from float32 rows is symmetric only to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LINALG = ("library", "unrolled")


def check_linalg(linalg: str) -> None:
    if linalg not in LINALG:
        raise ValueError(f"linalg must be one of {', '.join(map(repr, LINALG))}, got {linalg!r}")


def cholesky(matrices: jax.Array, linalg: str = "library") -> jax.Array:
    """Lower Cholesky factors of (..., n, n) symmetric positive-definite matrices (NaN where
    one is not positive definite)."""
    check_linalg(linalg)
    if linalg == "library":
        return jnp.linalg.cholesky(matrices)
    n = matrices.shape[-1]

    def entry(i, j):
        return (matrices[..., i, j] + matrices[..., j, i]) / 2

    factor = [[None] * n for _ in range(n)]
    for j in range(n):
        diagonal = jnp.sqrt(entry(j, j) - sum(factor[j][k] ** 2 for k in range(j)))
        factor[j][j] = diagonal
        for i in range(j + 1, n):
            factor[i][j] = (entry(i, j) - sum(factor[i][k] * factor[j][k] for k in range(j))) / diagonal
    zero = jnp.zeros_like(matrices[..., 0, 0])
    return jnp.stack([jnp.stack([factor[i][j] if j <= i else zero for j in range(n)], -1) for i in range(n)], -2)


def solve_lower(factor: jax.Array, v: jax.Array, *, transpose: bool = False, linalg: str = "library") -> jax.Array:
    """L^-1 v, or L^-T v, for lower-triangular L (..., n, n) and v (..., n, columns)."""
    check_linalg(linalg)
    if linalg == "library":
        return jax.scipy.linalg.solve_triangular(factor, v, lower=True, trans="T" if transpose else "N")
    n = factor.shape[-1]
    order = range(n - 1, -1, -1) if transpose else range(n)
    solution = {}
    for i in order:
        # row i of L (forward), or column i of L, i.e. row i of L^T (back substitution)
        known = sum((factor[..., k, i] if transpose else factor[..., i, k])[..., None] * solution[k] for k in solution)
        solution[i] = (v[..., i, :] - known) / factor[..., i, i, None]
    return jnp.stack([solution[i] for i in range(n)], -2)
