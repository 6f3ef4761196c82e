"""The chain runner: starting points, warm-up then draws in chunks, and what is kept.

Sampler-agnostic: it drives any ``hblogit.samplers`` sampler through the same loop. Each
phase (warm-up, sampling) is one compiled program that runs a chunk of steps inside a
``lax.fori_loop``; Python drives the chunks, which gives the progress bar and checkpoints:
between chunks the run is a ``Snapshot``, which ``checkpoint`` writes and reads back.
Chunk lengths are traced, so a short last chunk does not compile again. Both programs
compile in threads of their own while the starting points are found and warm-up runs,
from the shapes the run's states will have (``_programs_in_background``).

Memory is part of the design: at 2.1M parameters one draw is 8.4 MB per chain. Per draw
the runner keeps only the global parameters, the group effects of ``keep_groups``, and the
sample statistics; every group's posterior mean and sd are streamed (Welford) instead.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.flatten_util import ravel_pytree

from . import checkpoint
from .model import PRIOR_SD_SIGMA_ALPHA, PRIOR_SD_SIGMA_GAMMA, Constrained, Params, constrain
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
    checkpoint_every: int | None = None  # steps (warm-up steps and draws); None: ~CHECKPOINT_SECONDS

    def identity(self) -> dict:
        """The fields that decide the draws. The others decide only how the run is driven:
        ``chunk_size`` (chunks change no random number, see ``run``), ``progress`` and
        ``checkpoint_every``."""
        driving = ("chunk_size", "progress", "checkpoint_every")
        return {name: value for name, value in self._asdict().items() if name not in driving}


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


class Start(NamedTuple):
    positions: Params  # one per chain
    inverse_mass_matrix: jax.Array  # (chains, d), flattened as BlackJAX ravels a Params


def starting_points(key, logdensity, chains: int, steps: int, learning_rate: float, dtype) -> Start:
    """One start per chain, drawn near a conditional mode, and a first diagonal mass matrix.

    Each chain starts from its own random point (uniform on (-2, 2), as Stan) with the two
    group scales set to their prior medians, runs ``steps`` Adam steps on -logdensity over
    every parameter but the scales, then moves by a draw from N(0, F^-1), F the information
    diagonal there (``fisher_diagonal``).

    Why the scales are held: the joint mode of this non-centred model puts the scales far
    above the posterior's and the z's near 0 (at N = 100k, G = 10k, K = 20: sigma_gamma
    ~7.5 at the mode, 0.2-0.3 in truth, mean z^2 0.02), and NUTS started there needs
    trajectories at maximum tree depth to shrink every scale while growing every z.
    Why the jitter: the mode of 2M parameters lies far inside the typical set (|z| ~ 0
    against sqrt(d)), and NUTS started there spends its first steps travelling outwards.
    F^-1 is also the sampler's first inverse mass matrix, far closer to the posterior's
    scales than the identity. Raises ``ValueError`` naming the part of the density (prior or
    likelihood) that is not finite at a start.
    """
    key_start, key_jitter = jax.random.split(key)
    starts = jax.vmap(lambda k: logdensity.init_params(k, dtype))(jax.random.split(key_start, chains))
    modes = descend(_at_prior_median_scales(starts), logdensity, steps, learning_rate, hold_scales=True)
    start = _laplace_jitter(key_jitter, modes, logdensity)
    check_finite_start(start.positions, logdensity)
    return start


@jax.jit
def _laplace_jitter(key, modes: Params, logdensity) -> Start:
    def one_chain(key, mode):
        variance = jax.tree.map(jnp.reciprocal, logdensity.fisher_diagonal(mode))
        flat_variance, unravel = ravel_pytree(variance)
        noise = unravel(jax.random.normal(key, flat_variance.shape, flat_variance.dtype) * jnp.sqrt(flat_variance))
        return jax.tree.map(jnp.add, mode, noise), flat_variance

    positions, variances = jax.vmap(one_chain)(jax.random.split(key, jax.tree.leaves(modes)[0].shape[0]), modes)
    return Start(positions, variances)


HALF_NORMAL_MEDIAN = 0.6744897501960817  # the median of |N(0, 1)|


def _at_prior_median_scales(positions: Params) -> Params:
    """``positions`` with log sigma_alpha and log sigma_gamma at their half-normal priors' medians."""
    median = lambda sd: math.log(HALF_NORMAL_MEDIAN * sd)
    return positions._replace(
        log_sigma_alpha=jnp.full_like(positions.log_sigma_alpha, median(PRIOR_SD_SIGMA_ALPHA)),
        log_sigma_gamma=jnp.full_like(positions.log_sigma_gamma, median(PRIOR_SD_SIGMA_GAMMA)),
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def descend(starts: Params, logdensity, steps: int, learning_rate: float, hold_scales: bool = False) -> Params:
    """``steps`` Adam steps on -logdensity, for every chain at once; with ``hold_scales``,
    log sigma_alpha and log sigma_gamma stay where they start (a conditional mode)."""
    optimizer = optax.adam(learning_rate)

    def one_chain(position):
        def one_step(carry, _):
            position, opt_state = carry
            grad = jax.grad(lambda p: -logdensity(p))(position)
            if hold_scales:
                grad = grad._replace(log_sigma_alpha=jnp.zeros_like(grad.log_sigma_alpha), log_sigma_gamma=jnp.zeros_like(grad.log_sigma_gamma))
            updates, opt_state = optimizer.update(grad, opt_state)
            return (optax.apply_updates(position, updates), opt_state), None

        (position, _), _ = jax.lax.scan(one_step, (position, optimizer.init(position)), None, length=steps)
        return position

    return jax.vmap(one_chain)(starts)


@jax.jit
def _finite_parts(positions: Params, logdensity):
    """Per chain: are the prior, the likelihood and the whole density, with their gradients, finite?"""

    def all_finite(value, grad):
        return jnp.isfinite(value) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]))

    def one_chain(p):
        parts = (logdensity.log_prior, logdensity.log_likelihood, logdensity)
        return tuple(all_finite(*jax.value_and_grad(part)(p)) for part in parts)

    return jax.vmap(one_chain)(positions)


def check_finite_start(positions: Params, logdensity) -> None:
    """``ValueError`` naming the chains, and the part of the density (prior, likelihood, or
    the density as a whole when the sampler is given another one), that is not finite."""
    parts = _finite_parts(positions, logdensity)
    for name, ok in zip(("log-prior", "log-likelihood", "log-density"), parts):
        bad = np.flatnonzero(~np.asarray(ok))
        if bad.size:
            raise ValueError(
                f"the {name} or its gradient is not finite at the starting point of chain(s) "
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


_EXECUTABLES: collections.OrderedDict = collections.OrderedDict()
MAX_EXECUTABLES = 16  # a warm-up and a sampling program for each of 8 recent run shapes


def compiled(jitted, *args):
    """``jitted`` compiled ahead of time for ``args``' shapes, cached across runs.

    Ahead-of-time compilation lets the run record time compilation apart from sampling;
    the cache keeps a second run of the same shapes (tests, resumed runs, SBC's hundreds of
    fits) from compiling again. It holds the ``MAX_EXECUTABLES`` most recently used, so a
    process fitting many shapes does not keep every program (and its device memory).
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (jitted, treedef, tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)) for x in leaves))
    with _EXECUTABLES_LOCK:
        if key in _EXECUTABLES:
            _EXECUTABLES.move_to_end(key)
            return _EXECUTABLES[key]
    executable = jitted.lower(*args).compile()  # outside the lock: two programs compile at once
    with _EXECUTABLES_LOCK:
        _EXECUTABLES[key] = executable
        while len(_EXECUTABLES) > MAX_EXECUTABLES:
            _EXECUTABLES.popitem(last=False)
    return executable


_EXECUTABLES_LOCK = threading.Lock()  # programs compile in threads of their own (_programs_in_background)


class _InBackground:
    """``fn(*args)`` in a thread of its own; ``result()`` waits for it and raises what it
    raised. The thread is a daemon, so a run stopped early (an error, Ctrl-C) does not wait
    for it."""

    def __init__(self, fn, *args):
        self._done = threading.Event()
        self._value = self._error = None
        threading.Thread(target=self._run, args=(fn, args), daemon=True).start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as error:  # noqa: BLE001 (handed to result())
            self._error = error
        finally:
            self._done.set()

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def _chunks(total: int, size: int, start: int = 0):
    """(start, length) of the chunks from ``start``: a resumed phase goes on at a chunk boundary."""
    for chunk_start in range(start, total, size):
        yield chunk_start, min(size, total - chunk_start)


class RunKeys(NamedTuple):
    """The base keys of a run; step t of a phase uses ``fold_in(phase key, t)``."""

    init: jax.Array
    warmup: jax.Array
    sample: jax.Array


def run_keys(seed: int) -> RunKeys:
    return RunKeys(*jax.random.split(jax.random.key(seed), 3))


class Snapshot(NamedTuple):
    """Where a run stands after a chunk: all a checkpoint holds, and all a resume needs."""

    phase: str  # "warmup" or "sampling"
    step: int  # steps of warm-up, or draws, done in this phase: a chunk boundary
    keys: RunKeys
    state: Any  # the sampler's warm-up state in "warmup", its tuned state in "sampling"
    moments: GroupMoments | None  # None in "warmup"
    warmup_stats: dict[str, np.ndarray]  # name -> (chain, step) so far
    sample_stats: dict[str, np.ndarray]  # name -> (chain, draw) so far
    draws: dict[str, np.ndarray]  # Kept's names -> (chain, draw, ...) so far
    timings: dict[str, float]

    def steps_done(self, config: RunConfig) -> int:
        """Progress over the whole run: warm-up steps, then draws."""
        return self.step + (config.warmup if self.phase == "sampling" else 0)


TABLES = ("warmup_stats", "sample_stats", "draws")
CHECKPOINT_SECONDS = 60.0


class Checkpoints(NamedTuple):
    """Where the runner writes checkpoints, what identifies the run in them, where it resumes from.

    ``identity`` (the config that decides the draws, the data digest, versions) goes into
    every manifest; a resume is refused unless its data digest and config match
    (``checkpoint.check_same_run``). The versions are recorded, not compared, and so is the
    layout (in the run record): a resume under other versions or another layout goes on
    correctly, but its draws are then not bitwise those of a run never stopped.
    ``on_checkpoint(directory)`` is called after each write (e.g. to commit a cloud volume).
    """

    directory: Path
    identity: dict
    resume_from: Path | None = None
    on_checkpoint: Callable[[Path], None] | None = None


def _add_time(snapshot: Snapshot, name: str, seconds: float) -> Snapshot:
    return snapshot._replace(timings={**snapshot.timings, name: snapshot.timings.get(name, 0.0) + seconds})


def _append(table: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns of ``part`` (chain, length, ...) appended along the step axis."""
    return {name: np.concatenate([table[name], value], axis=1) if name in table else value for name, value in part.items()}


class _Progress:
    """A tqdm bar over all steps, showing phase, step size, divergences and gradients."""

    def __init__(self, config: RunConfig, snapshot: Snapshot):
        self.bar = None
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.warmup + config.draws, initial=snapshot.steps_done(config), unit="step", dynamic_ncols=True)
        done = [t for t in (snapshot.warmup_stats, snapshot.sample_stats) if t]
        self.divergences = sum(int(np.sum(t["diverging"])) for t in done)
        self.gradients = sum(int(np.sum(t["n_steps"])) for t in done)

    def update(self, phase: str, stats: dict[str, np.ndarray]):
        """``stats``: one chunk's columns, (chain, length)."""
        self.divergences += int(np.sum(stats["diverging"]))
        self.gradients += int(np.sum(stats["n_steps"]))
        if self.bar is not None:
            self.bar.set_description(phase)
            self.bar.set_postfix(
                step_size=f"{float(np.median(stats['step_size'][:, -1])):.3g}",
                divergences=self.divergences,
                gradients=f"{self.gradients:,}",
                refresh=False,
            )
            self.bar.update(stats["step_size"].shape[1])

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _to_numpy(tree, length) -> dict[str, np.ndarray]:
    """Chunk buffers (chunk, chains, ...) -> columns (chains, length, ...), by field name."""
    return jax.tree.map(lambda x: np.moveaxis(np.asarray(x[:length]), 0, 1), jax.device_get(tree))._asdict()


@functools.partial(jax.jit, static_argnums=(0, 3))
def _init(sampler, positions, logdensity, num_warmup, inverse_mass_matrix):
    return sampler.init(positions, logdensity, num_warmup, inverse_mass_matrix)


@functools.partial(jax.jit, static_argnums=(0,))
def _finish_warmup(sampler, state):
    return sampler.finish_warmup(state)


def _start(sampler, logdensity, config: RunConfig, dtype, keys: RunKeys, first: Start | None) -> Snapshot:
    """A fresh run: starting points (``first``, or ``starting_points``), the sampler's
    warm-up state."""
    start = time.perf_counter()
    if first is None:
        first = starting_points(keys.init, logdensity, config.chains, config.init_steps, config.init_learning_rate, dtype)
    else:
        check_finite_start(first.positions, logdensity)
    state = jax.block_until_ready(_init(sampler, first.positions, logdensity, config.warmup, first.inverse_mass_matrix))
    return Snapshot("warmup", 0, keys, state, None, {}, {}, {}, {"initialisation_s": time.perf_counter() - start})


class _Shapes(NamedTuple):
    keys: Any
    warmup_state: Any
    tuned_state: Any
    moments: Any


def _shapes(sampler, logdensity, config: RunConfig, dtype) -> _Shapes:
    """Shapes and structure of a run's keys, states and moments, traced, never computed."""

    def build(key):
        positions = jax.vmap(lambda k: logdensity.init_params(k, dtype))(jax.random.split(key, config.chains))
        inverse_mass_matrix = jax.vmap(lambda p: ravel_pytree(p)[0])(positions)
        state = _init(sampler, positions, logdensity, config.warmup, inverse_mass_matrix)
        return _Shapes(run_keys(config.seed), state, _finish_warmup(sampler, state), _moments_init(positions))

    return jax.eval_shape(build, jax.random.key(0))


def _template(sampler, logdensity, config: RunConfig, dtype, phase: str):
    """(keys, state, moments) in ``phase``, as shapes: what a checkpoint's leaves are
    rebuilt into."""
    shapes = _shapes(sampler, logdensity, config, dtype)
    if phase == "warmup":
        return shapes.keys, shapes.warmup_state, None
    return shapes.keys, shapes.tuned_state, shapes.moments


def _resume(sampler, logdensity, config: RunConfig, dtype, checkpoints: Checkpoints) -> Snapshot:
    directory = checkpoints.resume_from
    manifest = checkpoint.read_manifest(directory)
    checkpoint.check_same_run(manifest, checkpoints.identity, directory)
    template = _template(sampler, logdensity, config, dtype, manifest["phase"])
    (keys, state, moments), tables = checkpoint.load(directory, manifest, template)
    tables = {name: tables.get(name, {}) for name in TABLES}
    return Snapshot(manifest["phase"], manifest["step"], keys, state, moments, **tables, timings=manifest["timings"])


def _checkpointer(checkpoints: Checkpoints | None, config: RunConfig, snapshot: Snapshot):
    """``save(snapshot, force=False) -> snapshot``: writes a checkpoint when one is due, every
    ``config.checkpoint_every`` steps, or (None) after the chunk that crosses CHECKPOINT_SECONDS
    since the last; with ``force``, whenever the run moved since the last. The write's time
    is added to the timings as checkpoint_s."""
    last = {"steps": snapshot.steps_done(config), "time": time.monotonic()}

    def save(snapshot: Snapshot, force: bool = False) -> Snapshot:
        if checkpoints is None:
            return snapshot
        steps = snapshot.steps_done(config) - last["steps"]
        if config.checkpoint_every is None:
            due = time.monotonic() - last["time"] >= CHECKPOINT_SECONDS
        else:
            due = steps >= config.checkpoint_every
        if steps == 0 or not (due or force):
            return snapshot
        start = time.perf_counter()
        manifest = {**checkpoints.identity, "phase": snapshot.phase, "step": snapshot.step, "timings": snapshot.timings}
        tree = (snapshot.keys, snapshot.state, snapshot.moments)
        checkpoint.save(checkpoints.directory, manifest, tree, {name: getattr(snapshot, name) for name in TABLES})
        if checkpoints.on_checkpoint is not None:
            checkpoints.on_checkpoint(checkpoints.directory)
        last.update(steps=snapshot.steps_done(config), time=time.monotonic())
        return _add_time(snapshot, "checkpoint_s", time.perf_counter() - start)

    return save


def _drive(snapshot: Snapshot, total: int, chunk_size: int, advance, progress: _Progress, save) -> Snapshot:
    """The chunks of the current phase from ``snapshot.step`` to ``total``; a checkpoint after
    each chunk when one is due. ``advance(snapshot, start, length) -> (snapshot, stats)``."""
    for chunk_start, length in _chunks(total, chunk_size, snapshot.step):
        start = time.perf_counter()
        snapshot, stats = advance(snapshot, chunk_start, length)
        check_finite_chains(stats["lp"], snapshot.phase, chunk_start)
        snapshot = _add_time(snapshot._replace(step=chunk_start + length), f"{snapshot.phase}_s", time.perf_counter() - start)
        progress.update(snapshot.phase, stats)
        snapshot = save(snapshot)
    return snapshot


class SamplingError(RuntimeError):
    """A chain reached a point where the log-density is not finite, mid-run.

    A Metropolis-adjusted sampler rejects such a proposal (BlackJAX counts it as a
    divergence), and BlackJAX's MCLMC reverts such a step, so their chains never get there;
    a kernel with neither guard can move there and cannot come back. The run stops rather
    than go on from a corrupted state.
    """


def check_finite_chains(lp: np.ndarray, phase: str, first_step: int) -> None:
    """Raise ``SamplingError`` naming the chains whose log-density went non-finite in a chunk
    (``lp``: chains x steps, the chunk's first step being ``first_step`` of ``phase``)."""
    bad = ~np.isfinite(lp)
    if not bad.any():
        return
    chains = np.flatnonzero(bad.any(axis=1)).tolist()
    first = first_step + int(np.argmax(bad.any(axis=0)))
    where = "warm-up step" if phase == "warmup" else "draw"
    raise SamplingError(
        f"the log-density became non-finite in chain(s) {chains}, first at {where} {first} "
        f"({int(bad.sum())} non-finite step(s) in that chunk); the run stopped there. "
        "A step size too large for an unadjusted sampler, or a density that is NaN somewhere "
        "in the parameter space, does this"
    )


def _int32(value):
    return jnp.asarray(value, jnp.int32)


def _warmup_program(sampler, logdensity, config: RunConfig, state, key):
    """The compiled warm-up chunk for a warm-up ``state`` (arrays, or their shapes)."""
    warmup_chunk, _ = make_phases(sampler, config.chunk_size, config.thin)
    return compiled(warmup_chunk, state, key, _int32(0), _int32(1), logdensity)


def _warmup(sampler, logdensity, config: RunConfig, snapshot: Snapshot, progress, save, program=None) -> Snapshot:
    """Warm-up chunks, then the tuned state: the snapshot at the start of sampling. With no
    warm-up steps, the sampler's initial settings are its tuned ones. ``program``: the
    warm-up program compiling in the background, if any; "compile_warmup_s" times what is
    left to wait for."""
    start = time.perf_counter()
    chunk = None
    if config.warmup:
        if program is None:
            chunk = _warmup_program(sampler, logdensity, config, snapshot.state, snapshot.keys.warmup)
        else:
            chunk = program.result()
    snapshot = _add_time(snapshot, "compile_warmup_s", time.perf_counter() - start)

    def advance(s: Snapshot, chunk_start, length):
        state, stats = chunk(s.state, s.keys.warmup, _int32(chunk_start), _int32(length), logdensity)
        stats = _to_numpy(stats, length)
        return s._replace(state=state, warmup_stats=_append(s.warmup_stats, stats)), stats

    snapshot = _drive(snapshot, config.warmup, config.chunk_size, advance, progress, save)
    start = time.perf_counter()
    state = jax.block_until_ready(_finish_warmup(sampler, snapshot.state))
    snapshot = snapshot._replace(phase="sampling", step=0, state=state, moments=_moments_init(sampler.position(state)))
    return _add_time(snapshot, "warmup_s", time.perf_counter() - start)


def start_seconds(timings: dict[str, float]) -> float:
    """A run's seconds on its starting points and its compiles, which overlap
    (``_programs_in_background``): the initialisation, and what each phase still waited
    for its program."""
    return sum(timings.get(name, 0.0) for name in ("initialisation_s", "compile_warmup_s", "compile_sampling_s"))


def _sampling_program(sampler, logdensity, config: RunConfig, state, moments, key):
    """The compiled sampling chunk for a tuned ``state`` and ``moments`` (arrays, or their
    shapes)."""
    _, sample_chunk = make_phases(sampler, config.chunk_size, config.thin)
    keep = jnp.asarray(config.keep_groups, dtype=jnp.int32)
    return compiled(sample_chunk, state, moments, key, _int32(0), _int32(1), logdensity, keep)


def _programs_in_background(sampler, logdensity, config: RunConfig, dtype, keys: RunKeys) -> dict[str, _InBackground]:
    """The warm-up (if any) and sampling programs, each compiling in a thread of its own from
    the shapes the run's states will have (``_shapes``), while the starting points are
    found and warm-up runs. On a GPU the host's cores are idle meanwhile; on an H100, 40 s
    passed between gibbs's last warm-up step and its first draw at the post's size: the
    sampling compile, the end of warm-up and a checkpoint. On the 2-core CPU the compiles
    overlap each other and the starting points (experiments/RESULTS.md). None (an empty
    dict) for a density spread over several devices, whose shardings the shapes do not
    carry: its programs compile in turn, as each phase starts."""
    if any(len(leaf.sharding.device_set) > 1 for leaf in jax.tree.leaves(logdensity) if isinstance(leaf, jax.Array)):
        return {}
    make_phases(sampler, config.chunk_size, config.thin)  # here, so that every thread gets the same programs
    x64 = jax.config.jax_enable_x64  # thread-local where a float32 run turned it off: the threads need the caller's

    def in_background(program, state, *args):
        def compile_program():
            with jax.enable_x64(x64):
                return program(sampler, logdensity, config, state, *args)

        return _InBackground(compile_program)

    shapes = _shapes(sampler, logdensity, config, dtype)
    programs = {"sampling": in_background(_sampling_program, shapes.tuned_state, shapes.moments, keys.sample)}
    if config.warmup:
        programs["warmup"] = in_background(_warmup_program, shapes.warmup_state, keys.warmup)
    return programs


def _sampling(sampler, logdensity, config: RunConfig, snapshot: Snapshot, progress, save, program=None) -> Snapshot:
    """Sampling chunks; ``program``: the sampling program compiling in the background, if any.
    "compile_sampling_s" times what is left to wait for."""
    keep = jnp.asarray(config.keep_groups, dtype=jnp.int32)
    start = time.perf_counter()
    if program is None:
        chunk = _sampling_program(sampler, logdensity, config, snapshot.state, snapshot.moments, snapshot.keys.sample)
    else:
        chunk = program.result()
    snapshot = _add_time(snapshot, "compile_sampling_s", time.perf_counter() - start)

    def advance(s: Snapshot, chunk_start, length):
        state, moments, (stats, kept) = chunk(s.state, s.moments, s.keys.sample, _int32(chunk_start), _int32(length), logdensity, keep)
        stats, kept = _to_numpy(stats, length), _to_numpy(kept, length)
        return s._replace(state=state, moments=moments, sample_stats=_append(s.sample_stats, stats), draws=_append(s.draws, kept)), stats

    return _drive(snapshot, config.draws, config.chunk_size, advance, progress, save)


def run(
    sampler: Sampler,
    logdensity,
    config: RunConfig,
    *,
    dtype=None,
    checkpoints: Checkpoints | None = None,
    start: Start | None = None,
) -> RunResult:
    """Starting points, warm-up, draws. ``dtype`` is the parameters' (float64 in mixed mode).

    ``start`` gives the starting points and first inverse mass matrix instead of
    ``starting_points`` (to start several samplers, or densities, from the same points).

    With ``checkpoints``, writes checkpoints as it goes (and one at the end), and resumes from
    ``checkpoints.resume_from`` when set. Every step's key is ``fold_in(phase key, step)``
    and a resume goes on at the chunk boundary where the checkpoint was written, so a
    resumed run draws the same numbers as one never stopped (bitwise on the CPU).
    """
    dtype = dtype or jnp.result_type(float)
    if checkpoints is not None and checkpoints.resume_from is not None:
        snapshot = _resume(sampler, logdensity, config, dtype, checkpoints)
        programs = _programs_in_background(sampler, logdensity, config, dtype, snapshot.keys) if snapshot.phase == "warmup" else {}
    else:
        keys = run_keys(config.seed)
        programs = _programs_in_background(sampler, logdensity, config, dtype, keys)
        snapshot = _start(sampler, logdensity, config, dtype, keys, start)
    progress = _Progress(config, snapshot)
    save = _checkpointer(checkpoints, config, snapshot)
    if snapshot.phase == "warmup":
        snapshot = _warmup(sampler, logdensity, config, snapshot, progress, save, programs.get("warmup"))
    snapshot = _sampling(sampler, logdensity, config, snapshot, progress, save, programs.get("sampling"))
    progress.close()
    snapshot = save(snapshot, force=True)
    return _result(snapshot, config, sampler)


def _result(snapshot: Snapshot, config: RunConfig, sampler) -> RunResult:
    moments = jax.device_get(snapshot.moments)
    count = max(int(moments.count), 2)
    return RunResult(
        draws=snapshot.draws,
        sample_stats=snapshot.sample_stats,
        warmup_sample_stats=snapshot.warmup_stats,
        group_mean={"alpha_group": moments.alpha_group_mean, "gamma_group": moments.gamma_group_mean},
        group_sd={
            "alpha_group": np.sqrt(np.maximum(moments.alpha_group_m2, 0) / (count - 1)),
            "gamma_group": np.sqrt(np.maximum(moments.gamma_group_m2, 0) / (count - 1)),
        },
        keep_groups=tuple(config.keep_groups),
        timings=snapshot.timings,
        final_positions=sampler.position(snapshot.state),
    )
