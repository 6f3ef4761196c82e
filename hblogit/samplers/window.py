"""Stan's windowed warm-up (dual-averaging step size, diagonal mass matrix), step by step.

Built from BlackJAX's own pieces (``dual_averaging_adaptation``, ``mass_matrix_adaptation``,
``build_schedule``) rather than ``blackjax.window_adaptation(...).run``, because the runner
must drive warm-up in chunks: for a progress bar, and to checkpoint mid-warm-up. The
adaptation state is an explicit NamedTuple, and nothing is traced per step beyond it, so
warm-up keeps no per-step copy of the 2.1M-vector state (BlackJAX's default info trace does).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import MassMatrixAdaptationState, mass_matrix_adaptation
from blackjax.adaptation.step_size import DualAveragingAdaptationState, dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule


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
        return jnp.exp(state.step_size_state.log_step_size_avg), state.inverse_mass_matrix

    return init, update, final
