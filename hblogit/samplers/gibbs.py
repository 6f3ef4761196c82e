"""Metropolis-within-Gibbs: NUTS over the globals given the group effects, every group's
effects refreshed given the globals, and the scale moves."""

from __future__ import annotations

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .. import checks, small_linalg
from .. import moves as model_moves
from .base import register
from .nuts import NUTS

LOCATIONS = ("alpha", "beta")
GLOBALS = LOCATIONS + ("log_sigma_alpha", "log_sigma_gamma")


def _parts(params, names) -> tuple:
    return tuple(getattr(params, name) for name in names)


def _with_parts(params, names, values):
    return params._replace(**dict(zip(names, values)))


@register("gibbs")
class Gibbs(NUTS):
    """Each transition: NUTS over the globals with every z fixed, then the moves
    interweave, transport, ``refresh_effects``, transport, interweave (the transport where
    it runs for nuts: see ``WindowAdapted``).

    Why: NUTS over all 2.1M coordinates at the post's size takes ~127 gradients a draw,
    because its step size falls as d^(-1/4) over group coordinates that are nearly Gaussian
    given the globals. Here NUTS's trees are over at most 2K + 2 coordinates, and the z's
    are drawn afresh each transition from their Laplace approximation
    (``moves.refresh_effects``: exact, the groups being independent given the globals).

    The scales need a non-centred step (scale given z) besides interweave's centred one:
    with neither NUTS nor the transport moving them given z, a 4 x (500 + 500) run on the
    small preset ended at R-hat 1.98. Where the transport runs, it is that step, and NUTS
    moves the K + 1 locations alone: with the scales in NUTS too it took 57 gradients a draw
    instead of 8 at the post's K = 20 and 10 rows a group, since the scales' conditional
    given z is much narrower than the marginal their mass matrix is adapted to. Elsewhere
    NUTS moves all 2K + 2 globals. Measured in experiments/RESULTS.md ("gibbs").

    Options as nuts', but ``transport_passes`` defaults to 2 (the transport runs on both
    sides of the refresh: at the post's K = 20 and 10 rows a group one pass each gave a min
    bulk ESS of 204 and R-hat 1.025, two 255 and 1.015, in about the same time), plus
    ``newton_steps`` (default 1): Newton steps of each group's Laplace approximation, each a
    pass over the rows with a (K + 1)-square Cholesky factorisation per group. A step costs
    NUTS's gradients plus one (the moves' check), which ``n_steps`` counts, and the
    refresh's ``newton_steps`` + 2 passes over the rows, which it does not (they are not
    gradients: compare wall times). ``linalg`` (``"library"``, the default, or
    ``"unrolled"``): how the refresh factorises and solves its per-group matrices
    (``hblogit.small_linalg``); the draws are the same to rounding.

    ``chain_method="auto"`` runs the chains one after the other on a CPU, where a 4-chain
    step at the post's size took 1.55 s a chain against 2.44 vmapped, and in lock step
    (vmap) on a GPU, whatever the size. nuts's reason to go sequential on a GPU from 1M
    parameters, U-turn checkpoints the size of the parameter vector, does not hold for trees
    over 2K + 2 coordinates. What a gibbs step does besides them is passes over the rows, and
    short loops of small kernels (the transport's families, NUTS over the globals): on an
    H100 a vmapped 4-chain gradient cost half a lone chain's per chain, and on an H200 NUTS
    at 210k parameters ran 2x faster per chain vmapped, where one launch serves all chains
    (experiments/RESULTS.md). A gibbs step on a GPU has not been timed both ways yet
    (``experiments/bench_gibbs_step.py`` does).

    The chain's gradient is exact in NUTS's coordinates, which is all the next tree reads;
    elsewhere it is zero whenever the moves' check has rejected (see ``_transition``). The
    log-density must hold its rows on one device (``logdensity.data``): not a sharded one.
    """

    newton_steps: int = eqx.field(static=True, default=1)
    linalg: str = eqx.field(static=True, default="library")
    transport_passes: int = eqx.field(static=True, default=2)
    name: str = eqx.field(static=True, default="gibbs")

    def __check_init__(self):
        checks.integer(self.newton_steps, "newton_steps")
        small_linalg.check_linalg(self.linalg)

    def _auto_sequential(self, position) -> bool:
        return jax.default_backend() == "cpu"

    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix):
        """NUTS over the globals (or the locations) with z fixed. Its start reuses the
        chain's density and the gradient's part in NUTS's coordinates, and its end is the
        chain's new state with the gradient zero elsewhere: the moves that follow (``_move``)
        evaluate the density once more, which the next state then carries."""
        names = LOCATIONS if self._transports(logdensity) else GLOBALS
        position = chain.position
        variances = ravel_pytree(position)[1](inverse_mass_matrix)

        def conditional(values):
            return logdensity(_with_parts(position, names, values))

        start = blackjax.mcmc.hmc.HMCState(_parts(position, names), chain.logdensity, _parts(chain.logdensity_grad, names))
        state, info = blackjax.nuts.build_kernel()(
            key, start, conditional, step_size, ravel_pytree(_parts(variances, names))[0], self.max_num_doublings
        )
        gradient = _with_parts(jax.tree.map(jnp.zeros_like, chain.logdensity_grad), names, state.logdensity_grad)
        chain = blackjax.mcmc.hmc.HMCState(_with_parts(position, names, state.position), state.logdensity, gradient)
        return chain, self._stats(chain.logdensity, info, step_size)

    def _middle_moves(self, logdensity) -> list:
        data = model_moves.rows_of(logdensity)
        if data is None:
            raise ValueError(
                "gibbs needs the data's rows on one device (logdensity.data), and this log-density "
                "has none (it is sharded, or not hblogit's); use nuts"
            )
        return [lambda key, p: model_moves.refresh_effects(key, p, data, self.newton_steps, self.linalg)]
