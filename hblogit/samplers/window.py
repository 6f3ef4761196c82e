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
from blackjax.adaptation.mass_matrix import MassMatrixAdaptationState, mass_matrix_adaptation
from blackjax.adaptation.step_size import DualAveragingAdaptationState, dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule

from .base import StepStats, chain_keys, check_chain_method, map_chains


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
    other in the same program; see ``base.map_chains``) or ``"auto"``, which asks the
    subclass's ``_auto_sequential``: vmap unless it says otherwise.
    """

    target_acceptance_rate: float = eqx.field(static=True, default=0.8)
    initial_step_size: float = eqx.field(static=True, default=1.0)
    chain_method: str = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_chain_method(self.chain_method)

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
            chain, stats = self._transition(key, chain, logdensity, adaptation.step_size, adaptation.inverse_mass_matrix)
            adaptation = update(adaptation, stage, window_end, chain.position, stats.acceptance_rate)
            return chain, adaptation, stats

        keys = chain_keys(key, state.chain.logdensity.shape[0])
        sequential = self.sequential(state.chain.position)
        chain, adaptation, stats = map_chains(one_chain, sequential, keys, state.chain, state.adaptation)
        return WarmupState(chain, adaptation, state.schedule), stats

    def finish_warmup(self, state):
        _, _, final = window_adaptation(self.target_acceptance_rate)
        step_size, inverse_mass_matrix = jax.vmap(final)(state.adaptation)
        return TunedState(state.chain, step_size, inverse_mass_matrix)

    def step(self, key, state, logdensity):
        keys = chain_keys(key, state.chain.logdensity.shape[0])
        chain, stats = map_chains(
            lambda k, c, s, m: self._transition(k, c, logdensity, s, m),
            self.sequential(state.chain.position),
            keys, state.chain, state.step_size, state.inverse_mass_matrix,
        )
        return TunedState(chain, state.step_size, state.inverse_mass_matrix), stats

    def position(self, state):
        return state.chain.position
