"""The blocked layout's likelihood sums as one fused GPU kernel (Pallas, lowered to Triton).

``hblogit.layout`` cuts the rows into blocks of shape (K, width, pieces), pieces innermost.
XLA evaluates a block's sums (``model._block_sums``) in several passes, each reading X
again: eta, then the residuals, then T. This kernel makes one pass. Each program takes
``TILE`` consecutive pieces (one per GPU thread) and walks down their rows: for row m it
loads the K covariate values once, forms eta, the log-likelihood term and the residual r,
and adds r and r x_k to the piece's running sums S and T_k, kept in registers. X is read
exactly once, coalesced (neighbouring threads read neighbouring pieces), and nothing of
size N is written back: the outputs are per piece.

Only the per-piece parameters (a gather of G rows) and the per-piece sums' way back to the
groups stay in XLA (``model._blocked_value_and_grad``).

Not yet measured on a GPU. What to expect: one thread per piece gives ~130k threads at the
post's size, a fraction of what an H100 holds at once, so the kernel leans on the K
independent loads per row to keep memory busy; vmapped over chains, Pallas adds a grid axis,
so each chain's programs read X again (from L2 where they meet). JAX 0.12 deprecates Pallas'
Triton backend in favour of Mosaic GPU; jax 0.11, on the GPU machines measured so far, has it.

Triton wants power-of-two block shapes; here every load is a (TILE,) vector, so K and the
block widths can be anything (the loops over them are unrolled). The last tile of a block
is masked. On a CPU the same kernel runs in Pallas' interpreter: slow, but it is how the
tests check it against the oracle on a machine without a GPU, and ``lowers_for_gpu``
checks that it lowers to Triton for a given card.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

TILE = 128  # pieces per program, one per thread: 4 warps of 32


def _index(i: int):
    """A static index as an array: Pallas' interpreter takes no bare Python ints in ``.at``."""
    return jnp.int32(i)


def _kernel(intercept_ref, slopes_ref, x_ref, sign_ref, log_p_ref, s_ref, t_ref, *, num_pieces: int):
    num_covariates, width, _ = x_ref.shape
    start = pl.program_id(0) * TILE
    tile = pl.ds(start, TILE)
    in_bounds = start + jnp.arange(TILE) < num_pieces

    def load(ref):
        return plgpu.load(ref, mask=in_bounds, other=0)

    def store(ref, value):
        plgpu.store(ref, value, mask=in_bounds)

    intercept = load(intercept_ref.at[tile])
    slopes = [load(slopes_ref.at[_index(k), tile]) for k in range(num_covariates)]
    zero = jnp.zeros((TILE,), x_ref.dtype)
    log_p, S, T = zero, zero, [zero] * num_covariates
    for m in range(width):
        x = [load(x_ref.at[_index(k), _index(m), tile]) for k in range(num_covariates)]
        sign = load(sign_ref.at[_index(m), tile])  # 0 on padding rows and masked pieces
        eta = intercept
        for k in range(num_covariates):
            eta = eta + x[k] * slopes[k]
        signed_eta = sign * eta
        log_p = log_p - jax.nn.softplus(signed_eta) * (sign * sign)
        residual = -sign * jax.nn.sigmoid(signed_eta)
        S = S + residual
        T = [t + residual * xk for t, xk in zip(T, x)]
    store(log_p_ref.at[tile], log_p)
    store(s_ref.at[tile], S)
    for k in range(num_covariates):
        store(t_ref.at[_index(k), tile], T[k])


def piece_sums(piece_intercepts, piece_slopes, X, sign, *, interpret: bool | None = None):
    """Per piece: the log-likelihood (pieces,), S = sum r (pieces,), T = sum r x (K, pieces).

    ``piece_intercepts`` (pieces,) and ``piece_slopes`` (K, pieces) are the piece owners'
    coefficients, in X's dtype. ``interpret`` defaults to True off a GPU.
    """
    num_covariates, _, num_pieces = X.shape
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    per_piece = jax.ShapeDtypeStruct((num_pieces,), X.dtype)
    return pl.pallas_call(
        functools.partial(_kernel, num_pieces=num_pieces),
        out_shape=(per_piece, per_piece, jax.ShapeDtypeStruct((num_covariates, num_pieces), X.dtype)),
        grid=(pl.cdiv(num_pieces, TILE),),
        compiler_params=plgpu.CompilerParams(num_warps=TILE // 32),  # a thread per piece
        interpret=interpret,
    )(piece_intercepts, piece_slopes, X, sign)


def lowers_for_gpu(shapes, device_kind: str = "NVIDIA H100 80GB HBM3") -> str:
    """The Triton module ``piece_sums`` lowers to for ``shapes`` (its four arguments'
    ShapeDtypeStructs) on ``device_kind``, without that GPU: raises where Triton's lowering
    would. The PTX compile after it happens on the GPU only."""
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    skip = [jax.export.DisabledSafetyCheck.custom_call(plgpu.CUSTOM_CALL_TARGET_NAME)]
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(jax.jit(functools.partial(piece_sums, interpret=False)), platforms=["cuda"], disabled_checks=skip)(*shapes)
    return exported.mlir_module()
