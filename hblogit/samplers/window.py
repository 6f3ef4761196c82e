"""Stan's windowed warm-up (dual-averaging step size, diagonal mass matrix), step by step,
and ``WindowAdapted``: the sampler protocol for any HMC-family kernel tuned by it (nuts, hmc).

Built from BlackJAX's own pieces (``dual_averaging_adaptation``, ``mass_matrix_adaptation``,
``build_schedule``) rather than ``blackjax.window_adaptation(...).run``, because the runner
must drive warm-up in chunks: for a progress bar, and to checkpoint mid-warm-up. The
adaptation state is an explicit NamedTuple, and nothing is traced per step beyond it, so
warm-up keeps no per-step copy of the 2.1M-vector state (BlackJAX's default info trace does).
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import equinox as eqx
import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from blackjax.adaptation.mass_matrix import MassMatrixAdaptationState, mass_matrix_adaptation
from blackjax.adaptation.step_size import DualAveragingAdaptationState, dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule

from .. import checks
from .. import moves as model_moves
from .base import StepStats, check_chain_method, each_chain


class WindowState(NamedTuple):
    step_size_state: DualAveragingAdaptationState
    mass_state: MassMatrixAdaptationState
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


def schedule(num_warmup: int) -> np.ndarray:
    """(num_warmup, 2) int array: stage (0 fast, 1 slow) and whether a slow window ends."""
    if num_warmup == 0:
        return np.zeros((0, 2), np.int32)
    with jax.ensure_compile_time_eval():  # build_schedule uses jnp; keep it a constant
        return np.asarray(build_schedule(num_warmup), dtype=np.int32).reshape(num_warmup, 2)


def window_adaptation(target_acceptance_rate: float):
    """(init, update, final) for one chain, as in Stan."""
    da_init, da_update, da_final = dual_averaging_adaptation(target_acceptance_rate)
    mm_init, mm_update, mm_final = mass_matrix_adaptation(is_diagonal_matrix=True)

    def init(inverse_mass_matrix, initial_step_size) -> WindowState:
        mass = mm_init(inverse_mass_matrix.shape[0], inverse_mass_matrix)
        return WindowState(da_init(initial_step_size), mass, jnp.asarray(initial_step_size), mass.inverse_mass_matrix)

    def update(state: WindowState, stage, window_end, position, acceptance_rate) -> WindowState:
        step_size_state = da_update(state.step_size_state, acceptance_rate)
        mass_state = jax.lax.cond(
            stage == 1, lambda m: mm_update(m, position), lambda m: m, state.mass_state
        )

        def end_window(args):
            step_size_state, mass_state = args
            mass_state = mm_final(mass_state)
            return da_init(da_final(step_size_state)), mass_state

        step_size_state, mass_state = jax.lax.cond(
            window_end == 1, end_window, lambda args: args, (step_size_state, mass_state)
        )
        return WindowState(
            step_size_state,
            mass_state,
            jnp.exp(step_size_state.log_step_size),
            mass_state.inverse_mass_matrix,
        )

    def final(state: WindowState):
        # With no update since the last (re)start of dual averaging (no warm-up at all), its
        # average is empty: the step size is the one it started from.
        da = state.step_size_state
        log_step_size = jnp.where(da.step > 1, da.log_step_size_avg, da.log_step_size)
        return jnp.exp(log_step_size), state.inverse_mass_matrix

    return init, update, final


class WarmupState(NamedTuple):
    chain: Any  # a BlackJAX chain state, batched over chains
    adaptation: WindowState
    schedule: jax.Array  # (num_warmup, 2), shared by all chains


class TunedState(NamedTuple):
    chain: Any
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


class WindowAdapted(eqx.Module):
    """A per-chain HMC-family kernel, warmed up by Stan's windows, batched with ``vmap``.

    A subclass says only how one chain moves: ``_transition(key, chain, logdensity,
    step_size, inverse_mass_matrix) -> (chain, StepStats)``; its chain state must be
    BlackJAX's ``HMCState`` (``blackjax.hmc.init``).

    ``chain_method``: ``"vmap"`` (chains in lock step), ``"sequential"`` (one after the
    other in the same program; see ``base.each_chain``) or ``"auto"``, which asks the
    subclass's ``_auto_sequential``: vmap unless it says otherwise.

    Scale moves (``hblogit.moves``), after every transition, warm-up included: the slope and
    intercept scales are this model's slowest mixers, and these move them directly.
    ``interweave`` (default true; skipped with one group): scales and locations drawn
    given the centred effects.
    ``transport`` (default null: where groups have fewer than 20 rows on average and the
    density has its rows on one device, i.e. is not sharded; true insists, false turns it
    off): a Metropolis move of each scale that carries its z's along the Gaussian
    approximation of z | scale; ``transport_passes`` (default 3) times over the scales per
    transition. Together they cost one gradient per transition (to refresh the chain state)
    and a few O(N) passes per scale and pass. At the seed's 10 rows a group (CPU size, K = 4)
    one pass raised the slowest scale's ESS per gradient 4x and three passes 2.2x more, for
    16% more time; on the small preset interweave alone raised the smallest bulk ESS from
    1,179 to 1,527 (1,758 with an earlier version of its proposal; experiments/RESULTS.md).
    """

    target_acceptance_rate: float = eqx.field(static=True, default=0.8)
    initial_step_size: float = eqx.field(static=True, default=1.0)
    chain_method: str = eqx.field(static=True, default="auto")
    interweave: bool = eqx.field(static=True, default=True)
    transport: bool | None = eqx.field(static=True, default=None)
    transport_passes: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        checks.real(self.target_acceptance_rate, "target_acceptance_rate", 0, 1)
        checks.real(self.initial_step_size, "initial_step_size", 0)
        check_chain_method(self.chain_method)
        if not isinstance(self.interweave, bool):
            raise ValueError(f"interweave must be true or false, got {self.interweave!r}")
        if self.transport is not None and not isinstance(self.transport, bool):
            raise ValueError(f"transport must be true, false or null (auto), got {self.transport!r}")
        checks.integer(self.transport_passes, "transport_passes")

    def _auto_sequential(self, position) -> bool:
        return False

    def sequential(self, position) -> bool:
        """Whether chains of ``position`` (batched over chains) run one after the other."""
        if self.chain_method == "auto":
            return self._auto_sequential(position)
        return self.chain_method == "sequential"

    @abc.abstractmethod
    def _transition(self, key, chain, logdensity, step_size, inverse_mass_matrix) -> tuple[Any, StepStats]:
        ...

    def _transports(self, logdensity) -> bool:
        """Whether the transport move runs against ``logdensity``. It needs the rows on one
        device (``moves.rows_of``), which a sharded density does not offer; by default it runs
        where groups are weakly informed (``moves.transport_pays``)."""
        has_rows = model_moves.rows_of(logdensity) is not None
        if self.transport is None:
            return has_rows and model_moves.transport_pays(logdensity.dataset)
        if self.transport and not has_rows:
            raise ValueError(
                "transport needs the data's rows on one device, and this log-density has none "
                "(it is sharded, or not hblogit's); leave transport at its default (null) or set it false"
            )
        return self.transport

    def _middle_moves(self, logdensity) -> list:
        """Moves (themselves a palindrome) for the middle of the palindrome ``_scale_moves`` builds; none here."""
        return []

    def _scale_moves(self, position, logdensity, inverse_mass_matrix) -> list:
        """The moves asked for, each ``(key, position) -> (position, the model's change of
        log p)``, in the order to apply them: a palindrome (interweave, transport, interweave;
        with middle moves M, interweave, transport, M, transport, interweave) of reversible
        moves, so reversible as a whole."""
        moves = []
        if self.interweave and model_moves.num_groups(position) >= 2:
            moves.append(model_moves.interweave)
        if self._transports(logdensity):
            variances = ravel_pytree(position)[1](inverse_mass_matrix)
            log_scale_sds = jnp.sqrt(jnp.concatenate([variances.log_sigma_alpha[None], variances.log_sigma_gamma]))
            moves.append(
                lambda k, p: model_moves.transport_scales(
                    k, p, model_moves.rows_of(logdensity), log_scale_sds, passes=self.transport_passes
                )
            )
        middle = self._middle_moves(logdensity)
        return moves + middle + moves[::-1] if middle else moves + moves[-2::-1]

    def _move(self, key, chain, logdensity, step_size, inverse_mass_matrix) -> tuple[Any, StepStats]:
        """One chain's transition, then the scale moves asked for.

        The moves claim how much the model's log-density changed; the state's density (one
        gradient, which the state needs anyway) says how much it did. A Metropolis test on
        the difference accepts the moves whenever the density is the model's (to rounding)
        and keeps them exact for any other, or where the density is NaN.
        """
        moves = self._scale_moves(chain.position, logdensity, inverse_mass_matrix)
        if not moves:
            return self._transition(key, chain, logdensity, step_size, inverse_mass_matrix)
        key_transition, key_moves, key_accept = jax.random.split(key, 3)
        chain, stats = self._transition(key_transition, chain, logdensity, step_size, inverse_mass_matrix)
        position, claimed = chain.position, jnp.zeros((), chain.logdensity.dtype)
        for move, key in zip(moves, jax.random.split(key_moves, len(moves))):
            position, change = move(key, position)
            claimed = claimed + change
        proposal = blackjax.hmc.init(position, logdensity)
        log_ratio = proposal.logdensity - chain.logdensity - claimed
        accept = jnp.log(jax.random.uniform(key_accept, (), log_ratio.dtype)) < log_ratio
        chain = jax.tree.map(lambda new, old: jnp.where(accept, new, old), proposal, chain)
        return chain, stats._replace(lp=chain.logdensity, n_steps=stats.n_steps + 1)

    def init(self, positions, logdensity, num_warmup, inverse_mass_matrix):
        chains = jax.vmap(blackjax.hmc.init, in_axes=(0, None))(positions, logdensity)
        init, _, _ = window_adaptation(self.target_acceptance_rate)
        step_size = jnp.asarray(self.initial_step_size, chains.logdensity.dtype)
        adaptation = jax.vmap(init, in_axes=(0, None))(inverse_mass_matrix, step_size)
        return WarmupState(chains, adaptation, jnp.asarray(schedule(num_warmup)))

    def warmup_step(self, key, state, logdensity, step_index):
        _, update, _ = window_adaptation(self.target_acceptance_rate)
        stage, window_end = state.schedule[step_index]

        def one_chain(key, chain, adaptation):
            chain, stats = self._move(key, chain, logdensity, adaptation.step_size, adaptation.inverse_mass_matrix)
            adaptation = update(adaptation, stage, window_end, chain.position, stats.acceptance_rate)
            return chain, adaptation, stats

        sequential = self.sequential(state.chain.position)
        chain, adaptation, stats = each_chain(one_chain, key, state.chain, state.adaptation, sequential=sequential)
        return WarmupState(chain, adaptation, state.schedule), stats

    def finish_warmup(self, state):
        _, _, final = window_adaptation(self.target_acceptance_rate)
        step_size, inverse_mass_matrix = jax.vmap(final)(state.adaptation)
        return TunedState(state.chain, step_size, inverse_mass_matrix)

    def step(self, key, state, logdensity):
        chain, stats = each_chain(
            lambda k, c, s, m: self._move(k, c, logdensity, s, m),
            key, state.chain, state.step_size, state.inverse_mass_matrix,
            sequential=self.sequential(state.chain.position),
        )
        return TunedState(chain, state.step_size, state.inverse_mass_matrix), stats

    def position(self, state):
        return state.chain.position
