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

Not yet timed on a GPU. What to expect: one thread per piece gives ~130k threads at the
post's size, a fraction of what an H100 holds at once, so the kernel leans on the K
independent loads per row to keep memory busy. Vmapped over chains (``piece_sums``'s own
batching rule) a program evaluates several chains per row it loads, so X is read once per
group of chains (``chains_per_program``), not once per chain. JAX 0.12 deprecates Pallas'
Triton backend in favour of Mosaic GPU; jax 0.11, on the GPU machines measured so far, has it.

Triton wants power-of-two block shapes; here every load is a (TILE,) vector, so K and the
block widths can be anything. The loops over K and the chains are unrolled; the loop over a
block's rows is a loop. Unrolled, the kernel grew with the width (Triton modules of 650 kB
at 32 rows against 110 kB at 4, K = 20, one chain; 60 kB at either width as a loop), and on
an H100 with jax 0.11.2 the fused value-and-gradient had not compiled after about 90 s
(experiments/RESULTS.md). The last tile of a block is masked. On a CPU the same kernel runs
in Pallas' interpreter: slow, but it is how the tests check it against the oracle on a
machine without a GPU, and ``lowers_for_gpu`` checks that it lowers to Triton for a given
card.
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


# Slopes and sums per thread are 2 x chains x K registers: a program takes as many chains as
# keep chains x K within this (and divide the chains); the rest split over the grid.
MAX_CHAIN_COVARIATES = 64


def _kernel(intercept_ref, slopes_ref, x_ref, sign_ref, log_p_ref, s_ref, t_ref, *, num_pieces: int, chains: int):
    """One program: ``TILE`` pieces of ``chains`` chains; refs carry a leading chain axis."""
    num_covariates, width, _ = x_ref.shape
    start = pl.program_id(0) * TILE
    tile = pl.ds(start, TILE)
    in_bounds = start + jnp.arange(TILE) < num_pieces
    chain_ids = [pl.program_id(1) * chains + c for c in range(chains)]

    def load(ref):
        return plgpu.load(ref, mask=in_bounds, other=0)

    def store(ref, value):
        plgpu.store(ref, value, mask=in_bounds)

    intercept = [load(intercept_ref.at[c, tile]) for c in chain_ids]
    slopes = [[load(slopes_ref.at[c, _index(k), tile]) for k in range(num_covariates)] for c in chain_ids]

    def add_row(m, sums):
        log_p, S, T = sums
        x = [load(x_ref.at[_index(k), m, tile]) for k in range(num_covariates)]
        sign = load(sign_ref.at[m, tile])  # 0 on padding rows and masked pieces
        for c in range(chains):
            eta = intercept[c]
            for k in range(num_covariates):
                eta = eta + x[k] * slopes[c][k]
            signed_eta = sign * eta
            log_p[c] = log_p[c] - jax.nn.softplus(signed_eta) * (sign * sign)
            residual = -sign * jax.nn.sigmoid(signed_eta)
            S[c] = S[c] + residual
            T[c] = [t + residual * xk for t, xk in zip(T[c], x)]
        return log_p, S, T

    zero = jnp.zeros((TILE,), x_ref.dtype)
    start_sums = ([zero] * chains, [zero] * chains, [[zero] * num_covariates for _ in range(chains)])
    log_p, S, T = jax.lax.fori_loop(0, width, add_row, start_sums)
    for c, chain in enumerate(chain_ids):
        store(log_p_ref.at[chain, tile], log_p[c])
        store(s_ref.at[chain, tile], S[c])
        for k in range(num_covariates):
            store(t_ref.at[chain, _index(k), tile], T[c][k])


def chains_per_program(num_chains: int, num_covariates: int) -> int:
    """The most chains, dividing ``num_chains``, whose slopes fit ``MAX_CHAIN_COVARIATES``."""
    fits = [c for c in range(1, num_chains + 1) if num_chains % c == 0 and c * num_covariates <= MAX_CHAIN_COVARIATES]
    return max(fits, default=1)


def _call(intercepts, slopes, X, sign, interpret: bool):
    """The kernel over (chains, ...) parameters: (chains, pieces) x 2 and (chains, K, pieces)."""
    num_covariates, _, num_pieces = X.shape
    num_chains = intercepts.shape[0]
    chains = chains_per_program(num_chains, num_covariates)
    per_piece = jax.ShapeDtypeStruct((num_chains, num_pieces), X.dtype)
    return pl.pallas_call(
        functools.partial(_kernel, num_pieces=num_pieces, chains=chains),
        out_shape=(per_piece, per_piece, jax.ShapeDtypeStruct((num_chains, num_covariates, num_pieces), X.dtype)),
        grid=(pl.cdiv(num_pieces, TILE), num_chains // chains),
        compiler_params=plgpu.CompilerParams(num_warps=TILE // 32),  # a thread per piece
        interpret=interpret,
    )(intercepts, slopes, X, sign)


@functools.cache
def _piece_sums(interpret: bool):
    """``piece_sums`` for one chain, whose ``vmap`` over chains is one kernel call with a
    chain axis, so that a program reads its rows of X once for all its chains (with
    ``jax.vmap``'s own rule for ``pallas_call``, every chain would read X again)."""

    @jax.custom_batching.custom_vmap
    def piece_sums(intercepts, slopes, X, sign):
        return tuple(out[0] for out in _call(intercepts[None], slopes[None], X, sign, interpret))

    @piece_sums.def_vmap
    def batched(axis_size, in_batched, intercepts, slopes, X, sign):
        args = (intercepts, slopes, X, sign)
        along = tuple(a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(args, in_batched))
        if in_batched[2] or in_batched[3]:  # data that differ along the batch: one at a time
            return jax.lax.map(lambda a: piece_sums(*a), along), (True, True, True)
        return _call(along[0], along[1], X, sign, interpret), (True, True, True)

    return piece_sums


def piece_sums(piece_intercepts, piece_slopes, X, sign, *, interpret: bool | None = None):
    """Per piece: the log-likelihood (pieces,), S = sum r (pieces,), T = sum r x (K, pieces).

    ``piece_intercepts`` (pieces,) and ``piece_slopes`` (K, pieces) are the piece owners'
    coefficients, in X's dtype; ``jax.vmap`` over them (chains) gives one kernel with a chain
    axis. ``interpret`` defaults to True off a GPU.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if X.shape[0] == 0:  # no covariates: Pallas takes no empty arrays, so a zero covariate stands in
        zero = jnp.zeros((1, *X.shape[1:]), X.dtype)
        log_p, S, T = _piece_sums(interpret)(piece_intercepts, jnp.zeros_like(zero[:, 0]), zero, sign)
        return log_p, S, T[:0]
    return _piece_sums(interpret)(piece_intercepts, piece_slopes, X, sign)


def lowers_for_gpu(shapes, device_kind: str = "NVIDIA H100 80GB HBM3") -> str:
    """The Triton module ``piece_sums`` lowers to for ``shapes`` (its four arguments'
    ShapeDtypeStructs; intercepts of shape (chains, pieces) and slopes (chains, K, pieces)
    mean ``piece_sums`` vmapped over chains) on ``device_kind``, without that GPU: raises
    where Triton's lowering would. The PTX compile after it happens on the GPU only."""
    sums = functools.partial(piece_sums, interpret=False)
    if len(shapes[0].shape) == 2:
        sums = jax.vmap(sums, in_axes=(0, 0, None, None))
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    skip = [jax.export.DisabledSafetyCheck.custom_call(plgpu.CUSTOM_CALL_TARGET_NAME)]
    with jax.sharding.use_abstract_mesh(mesh):
        exported = jax.export.export(jax.jit(sums), platforms=["cuda"], disabled_checks=skip)(*shapes)
    return exported.mlir_module()
