"""The chain runner: starting points, warm-up then draws in chunks, and what is kept.

Sampler-agnostic: it drives any ``hblogit.samplers`` sampler through the same loop. Each
phase (warm-up, sampling) is one compiled program that runs a chunk of steps inside a
``lax.fori_loop``; Python drives the chunks, which gives the progress bar and a seam for
checkpoints. Chunk lengths are traced, so a short last chunk does not compile again.

Memory is part of the design: at 2.1M parameters one draw is 8.4 MB per chain. Per draw
the runner keeps only the global parameters, the group effects of ``keep_groups``, and the
sample statistics; every group's posterior mean and sd are streamed (Welford) instead.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.flatten_util import ravel_pytree

from .model import Constrained, Params, constrain
from .samplers.base import Sampler, StepStats


class RunConfig(NamedTuple):
    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    thin: int = 1
    seed: int = 0
    keep_groups: tuple[int, ...] = ()
    chunk_size: int = 50
    init_steps: int = 200
    init_learning_rate: float = 0.05
    progress: bool = True


class GroupMoments(NamedTuple):
    """Welford accumulators, per chain, of the constrained group effects."""

    count: jax.Array
    alpha_group_mean: jax.Array
    alpha_group_m2: jax.Array
    gamma_group_mean: jax.Array
    gamma_group_m2: jax.Array


class Kept(NamedTuple):
    """What is stored for every draw (leading axis: chains)."""

    alpha: jax.Array
    beta: jax.Array
    sigma_alpha: jax.Array
    sigma_gamma: jax.Array
    alpha_group: jax.Array  # (chains, len(keep_groups))
    gamma_group: jax.Array  # (chains, len(keep_groups), K)


class RunResult(NamedTuple):
    draws: dict[str, np.ndarray]  # name -> (chain, draw, ...)
    sample_stats: dict[str, np.ndarray]  # name -> (chain, draw)
    warmup_sample_stats: dict[str, np.ndarray]
    group_mean: dict[str, np.ndarray]  # alpha_group (chain, G), gamma_group (chain, G, K)
    group_sd: dict[str, np.ndarray]
    keep_groups: tuple[int, ...]
    timings: dict[str, float]
    final_positions: Any


def default_keep_groups(num_groups: int, count: int = 5) -> tuple[int, ...]:
    """``count`` groups spread evenly over the group range."""
    return tuple(int(g) for g in np.unique(np.linspace(0, num_groups - 1, min(count, num_groups)).astype(int)))


def starting_points(key, logdensity, chains: int, steps: int, learning_rate: float, dtype) -> Params:
    """One start per chain: a random point (uniform on (-2, 2), as Stan) moved toward the mode.

    Each chain runs ``steps`` Adam steps on -logdensity from its own random point, so the
    starts are near the bulk but still dispersed. Raises ``ValueError`` naming the part of
    the density (prior or likelihood) that is not finite at a start.
    """
    starts = jax.vmap(lambda k: logdensity.init_params(k, dtype))(jax.random.split(key, chains))
    positions = _descend(starts, logdensity, steps, learning_rate)
    check_finite_start(positions, logdensity)
    return positions


@functools.partial(jax.jit, static_argnums=(2, 3))
def _descend(starts: Params, logdensity, steps: int, learning_rate: float) -> Params:
    """``steps`` Adam steps on -logdensity, for every chain at once."""
    optimizer = optax.adam(learning_rate)

    def one_chain(position):
        def one_step(carry, _):
            position, opt_state = carry
            grad = jax.grad(lambda p: -logdensity(p))(position)
            updates, opt_state = optimizer.update(grad, opt_state)
            return (optax.apply_updates(position, updates), opt_state), None

        (position, _), _ = jax.lax.scan(one_step, (position, optimizer.init(position)), None, length=steps)
        return position

    return jax.vmap(one_chain)(starts)


@jax.jit
def _finite_parts(positions: Params, logdensity):
    """Per chain: are the prior and the likelihood, with their gradients, finite?"""

    def all_finite(value, grad):
        return jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in grad]))

    def one_chain(p):
        prior = jax.value_and_grad(logdensity.log_prior)(p)
        likelihood = jax.value_and_grad(logdensity.log_likelihood)(p)
        return all_finite(*prior), all_finite(*likelihood)

    return jax.vmap(one_chain)(positions)


def check_finite_start(positions: Params, logdensity) -> None:
    prior_ok, likelihood_ok = _finite_parts(positions, logdensity)
    for name, ok in (("prior", prior_ok), ("likelihood", likelihood_ok)):
        bad = np.flatnonzero(~np.asarray(ok))
        if bad.size:
            raise ValueError(
                f"the log-{name} or its gradient is not finite at the starting point of chain(s) "
                f"{bad.tolist()}; check the data for extreme covariates"
            )


def _kept(position: Params, keep: jax.Array) -> Kept:
    c: Constrained = constrain(position)
    return Kept(c.alpha, c.beta, c.sigma_alpha, c.sigma_gamma, c.alpha_group[:, keep], c.gamma_group[:, keep, :])


@jax.jit
def _moments_init(position: Params) -> GroupMoments:
    c = constrain(position)
    zeros = jnp.zeros_like
    return GroupMoments(
        jnp.zeros((), jnp.int32), zeros(c.alpha_group), zeros(c.alpha_group), zeros(c.gamma_group), zeros(c.gamma_group)
    )


def _moments_update(m: GroupMoments, position: Params) -> GroupMoments:
    c = constrain(position)
    count = m.count + 1

    def welford(mean, m2, x):
        delta = x - mean
        mean = mean + delta / count
        return mean, m2 + delta * (x - mean)

    a_mean, a_m2 = welford(m.alpha_group_mean, m.alpha_group_m2, c.alpha_group)
    g_mean, g_m2 = welford(m.gamma_group_mean, m.gamma_group_m2, c.gamma_group)
    return GroupMoments(count, a_mean, a_m2, g_mean, g_m2)


def _stats_buffer(stats_shape, length):
    return jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), stats_shape)


def _thinned(stats: StepStats) -> StepStats:
    """Statistics of ``thin`` consecutive steps as one draw: divergence and gradients summed
    over the block, the rest from its last step."""
    last = jax.tree.map(lambda x: x[-1], stats)
    return last._replace(diverging=jnp.any(stats.diverging, axis=0), n_steps=jnp.sum(stats.n_steps, axis=0))


@functools.lru_cache(maxsize=16)
def make_phases(sampler: Sampler, chunk_size: int, thin: int):
    """The two jitted chunk programs: warm-up and sampling (cached: runs share compiles)."""

    def warmup_chunk(state, key, start, length, logdensity):
        stats_shape = jax.eval_shape(lambda: sampler.warmup_step(key, state, logdensity, start)[1])

        def body(i, carry):
            state, buffer = carry
            t = start + i
            state, stats = sampler.warmup_step(jax.random.fold_in(key, t), state, logdensity, t)
            return state, jax.tree.map(lambda b, s: b.at[i].set(s), buffer, stats)

        return jax.lax.fori_loop(0, length, body, (state, _stats_buffer(stats_shape, chunk_size)))

    def sample_chunk(state, moments, key, start, length, logdensity, keep):
        def draw(state, t):
            def one(state, j):
                return sampler.step(jax.random.fold_in(key, t * thin + j), state, logdensity)

            state, stats = jax.lax.scan(one, state, jnp.arange(thin))
            return state, _thinned(stats)

        shapes = jax.eval_shape(lambda: (draw(state, start)[1], _kept(sampler.position(state), keep)))

        def body(i, carry):
            state, moments, (stats_buffer, kept_buffer) = carry
            state, stats = draw(state, start + i)
            position = sampler.position(state)
            moments = _moments_update(moments, position)
            kept = _kept(position, keep)
            put = lambda b, x: b.at[i].set(x)
            return state, moments, (jax.tree.map(put, stats_buffer, stats), jax.tree.map(put, kept_buffer, kept))

        buffers = tuple(_stats_buffer(s, chunk_size) for s in shapes)
        return jax.lax.fori_loop(0, length, body, (state, moments, buffers))

    return (
        jax.jit(warmup_chunk, donate_argnums=(0,)),
        jax.jit(sample_chunk, donate_argnums=(0, 1)),
    )


_EXECUTABLES: dict = {}


def compiled(jitted, *args):
    """``jitted`` compiled ahead of time for ``args``' shapes, cached across runs.

    Ahead-of-time compilation lets the run record time compilation apart from sampling;
    the cache keeps a second run of the same shapes (tests, resumed runs) from compiling
    again.
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (jitted, treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves))
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = jitted.lower(*args).compile()
    return _EXECUTABLES[key]


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield start, min(size, total - start)


class _Progress:
    """A tqdm bar over all steps, showing phase, step size, divergences and gradients."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)
        self.divergences = 0
        self.gradients = 0

    def update(self, phase: str, stats: StepStats, length: int):
        self.divergences += int(np.sum(stats.diverging[:length]))
        self.gradients += int(np.sum(stats.n_steps[:length]))
        if self.bar is not None:
            self.bar.set_description(phase)
            self.bar.set_postfix(
                step_size=f"{float(np.median(stats.step_size[length - 1])):.3g}",
                divergences=self.divergences,
                gradients=f"{self.gradients:,}",
                refresh=False,
            )
            self.bar.update(length)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _to_numpy(tree, length):
    """Chunk buffers (chunk, chains, ...) -> numpy (chains, length, ...)."""
    return jax.tree.map(lambda x: np.moveaxis(np.asarray(x[:length]), 0, 1), tree)


def _concat(parts: Sequence, axis=1):
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=axis), *parts)


@jax.jit
def initial_inverse_mass_matrix(positions: Params, logdensity) -> jax.Array:
    """(chains, d): one over the information diagonal at each chain's start, flattened in
    the order BlackJAX ravels a Params."""
    information = jax.vmap(logdensity.fisher_diagonal)(positions)
    return jax.vmap(lambda i: ravel_pytree(jax.tree.map(jnp.reciprocal, i))[0])(information)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _init(sampler, positions, logdensity, num_warmup, inverse_mass_matrix):
    return sampler.init(positions, logdensity, num_warmup, inverse_mass_matrix)


@functools.partial(jax.jit, static_argnums=(0,))
def _finish_warmup(sampler, state):
    return sampler.finish_warmup(state)


def run(sampler: Sampler, logdensity, config: RunConfig, *, dtype=None) -> RunResult:
    """Starting points, warm-up, draws. ``dtype`` is the parameters' (float64 in mixed mode)."""
    dtype = dtype or jnp.result_type(float)
    key_init, key_warmup, key_sample = jax.random.split(jax.random.key(config.seed), 3)
    keep = jnp.asarray(config.keep_groups, dtype=jnp.int32)
    timings = {}

    start = time.perf_counter()
    positions = starting_points(key_init, logdensity, config.chains, config.init_steps, config.init_learning_rate, dtype)
    inverse_mass_matrix = initial_inverse_mass_matrix(positions, logdensity)
    state = _init(sampler, positions, logdensity, config.warmup, inverse_mass_matrix)
    jax.block_until_ready(state)
    timings["initialisation_s"] = time.perf_counter() - start

    warmup_chunk, sample_chunk = make_phases(sampler, config.chunk_size, config.thin)
    start = time.perf_counter()
    int32 = lambda v: jnp.asarray(v, jnp.int32)
    warmup_compiled = compiled(warmup_chunk, state, key_warmup, int32(0), int32(1), logdensity)
    timings["compile_warmup_s"] = time.perf_counter() - start

    progress = _Progress(config.warmup + config.draws, config.progress)
    warmup_stats = []
    start = time.perf_counter()
    for chunk_start, length in _chunks(config.warmup, config.chunk_size):
        state, stats = warmup_compiled(state, key_warmup, int32(chunk_start), int32(length), logdensity)
        stats = jax.device_get(stats)
        progress.update("warm-up", stats, length)
        warmup_stats.append(_to_numpy(stats, length))
    state = _finish_warmup(sampler, state)
    jax.block_until_ready(state)
    timings["warmup_s"] = time.perf_counter() - start

    moments = _moments_init(sampler.position(state))
    start = time.perf_counter()
    sample_compiled = compiled(sample_chunk, state, moments, key_sample, int32(0), int32(1), logdensity, keep)
    timings["compile_sampling_s"] = time.perf_counter() - start

    draws, sample_stats = [], []
    start = time.perf_counter()
    for chunk_start, length in _chunks(config.draws, config.chunk_size):
        state, moments, (stats, kept) = sample_compiled(
            state, moments, key_sample, int32(chunk_start), int32(length), logdensity, keep
        )
        stats, kept = jax.device_get((stats, kept))
        progress.update("sampling", stats, length)
        sample_stats.append(_to_numpy(stats, length))
        draws.append(_to_numpy(kept, length))
    jax.block_until_ready(moments)
    timings["sampling_s"] = time.perf_counter() - start
    progress.close()

    moments = jax.device_get(moments)
    count = max(int(moments.count), 2)
    return RunResult(
        draws=_concat(draws)._asdict() if draws else {},
        sample_stats=_concat(sample_stats)._asdict() if sample_stats else {},
        warmup_sample_stats=_concat(warmup_stats)._asdict() if warmup_stats else {},
        group_mean={"alpha_group": moments.alpha_group_mean, "gamma_group": moments.gamma_group_mean},
        group_sd={
            "alpha_group": np.sqrt(np.maximum(moments.alpha_group_m2, 0) / (count - 1)),
            "gamma_group": np.sqrt(np.maximum(moments.gamma_group_m2, 0) / (count - 1)),
        },
        keep_groups=tuple(config.keep_groups),
        timings=timings,
        final_positions=sampler.position(state),
    )
