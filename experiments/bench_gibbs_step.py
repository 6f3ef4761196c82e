"""Time a gibbs step at the post's size, piece by piece, and whole, with its chains in lock
step (vmap) and one after the other (sequential).

    python experiments/bench_gibbs_step.py [--platform cpu|gpu] [--chains C] [--repeats R] [--smoke]

Why: on an H100 a 4-chain gibbs step on the seed took 0.31 s, of which its ~8 gradients a
chain are ~13 ms (experiments/RESULTS.md). This says where the rest goes, on the device
it runs on. The pieces, at one float64 point over float32 data (the fit's mixed
precision), in the layout "auto" picks, each vmapped over C chains:

  value and gradient         the log-density's (a NUTS step over the globals takes ~8)
  group terms                ``model.group_terms``: per group, log-likelihood, gradient and
                             (K + 1)-square information
  Cholesky                   ``jnp.linalg.cholesky`` of G (K + 1)-square precisions
  triangular solve (1, 2)    ``jax.scipy.linalg.solve_triangular`` with 1 and 2 right-hand sides
  ... (unrolled)             the same with ``linalg="unrolled"`` (``hblogit.small_linalg``):
                             the factorisation and solves as elementwise expressions over the
                             groups, a candidate for GPUs (gibbs's option ``linalg``)
  refresh                    ``moves.refresh_effects``, whole (the three above and two passes
                             for the likelihood)
  transport, one pass        ``moves.transport_scales`` (gibbs makes 2 x transport_passes), in
                             the layout of the rest; ``(segment)``: over the rows in the
                             segment layout, for comparison
  interweave                 ``moves.interweave`` (gibbs makes 2)
  gibbs step (M)             ``Gibbs(chain_method=M).step``, NUTS included, at a step size of
                             STEP_SIZE with a unit mass matrix (its trees' gradients a chain
                             are printed: a tuned run's trees take ~8)

"per chain" divides by C. Timing as bench_gradient.py's: three rounds of R back-to-back
calls, medians.
"""

from __future__ import annotations

import os
import platform
import sys

from bench_gradient import benchmark_parser, first_call_seconds, interleaved_medians, smoke_sized

STEP_SIZE = 0.01


def parse_args(argv=None):
    parser = benchmark_parser(__doc__, chains=4, chains_help="chains per call (default 4, as the fit)", repeats=5)
    return smoke_sized(parser.parse_args(argv), repeats=2)


def main(argv=None):
    args = parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.platform == "gpu" else "cpu"
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import hblogit
    from hblogit import model, moves, small_linalg
    from hblogit.samplers.gibbs import Gibbs

    sim = hblogit.simulate(args.num_obs, args.num_groups, args.num_covariates, seed=827)
    dataset = sim.dataset()
    logdensity = hblogit.make_logdensity(dataset)
    data = logdensity.data
    keys = jax.random.split(jax.random.key(0), args.chains)
    points = jax.vmap(lambda k: hblogit.init_params(k, dataset, radius=0.5, dtype=jnp.float64))(keys)

    def precision_of(p):  # each group's, as the refresh factorises it
        f = moves.families(p)
        return moves.newton_precision(f, f.z, data)[1]

    precisions = jax.jit(jax.vmap(precision_of))(points)
    factors = jax.jit(jax.vmap(small_linalg.cholesky))(precisions)
    columns = {c: jnp.ones((*factors.shape[:-1], c), factors.dtype) for c in (1, 2)}
    log_scale_sds = jnp.full(args.num_covariates + 1, 0.1)

    def solve(linalg):
        return lambda factor, v: small_linalg.solve_lower(factor, v, linalg=linalg)

    def refresh(linalg):
        return lambda k, p: moves.refresh_effects(k, p, data, linalg=linalg)

    batched = {
        "value and gradient": (jax.value_and_grad(logdensity), points),
        "group terms": (lambda p: model.group_terms(p, data), points),
        "Cholesky": (small_linalg.cholesky, precisions),
        "Cholesky (unrolled)": (lambda m: small_linalg.cholesky(m, "unrolled"), precisions),
        "triangular solve, 1 column": (solve("library"), factors, columns[1]),
        "triangular solve, 2 columns": (solve("library"), factors, columns[2]),
        "triangular solve, 2 columns (unrolled)": (solve("unrolled"), factors, columns[2]),
        "refresh": (refresh("library"), keys, points),
        "refresh (unrolled)": (refresh("unrolled"), keys, points),
        "transport, one pass": (lambda k, p: moves.transport_scales(k, p, data, log_scale_sds), keys, points),
        "transport, one pass (segment)": (lambda k, p: moves.transport_scales(k, p, dataset, log_scale_sds), keys, points),
        "interweave": (moves.interweave, keys, points),
    }
    contenders = []  # (name, fn)
    for name, (fn, *inputs) in batched.items():
        compiled = jax.jit(jax.vmap(fn))
        contenders.append((name, lambda f=compiled, a=tuple(inputs): jax.block_until_ready(f(*a))))
    steps = {method: gibbs_step(Gibbs(chain_method=method), points, logdensity) for method in ("vmap", "sequential")}
    for method, (step, state) in steps.items():
        contenders.append((f"gibbs step ({method})", lambda f=step, s=state: jax.block_until_ready(f(jax.random.key(1), s))))

    first = [first_call_seconds(name, fn) for name, fn in contenders]
    medians = interleaved_medians([fn for _, fn in contenders], args.repeats)
    gradients = {method: np.asarray(step(jax.random.key(1), state)[1]) for method, (step, state) in steps.items()}

    device = jax.devices()[0]
    print(f"# gibbs step, N={args.num_obs:,} G={args.num_groups:,} K={args.num_covariates}, layout "
          f"{model.choose_layout(dataset)}, float64 parameters over float32 data, chains={args.chains}, "
          f"3 rounds of {args.repeats} repeats")
    print(f"# device: {device.platform} ({device.device_kind}); host: {platform.node()} {os.cpu_count()} cores; "
          f"jax {jax.__version__}, python {sys.version.split()[0]}")
    print(f"# gradients a chain in the timed gibbs steps (step size {STEP_SIZE}, unit mass matrix): "
          + "; ".join(f"{method} {counts.tolist()}" for method, counts in gradients.items()))
    print("| piece | median (ms) | per chain (ms) | first call incl. compile (s) |")
    print("| --- | ---: | ---: | ---: |")
    for (name, _), seconds, first_s in zip(contenders, medians, first):
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds * 1e3 / args.chains:.2f} | {first_s:.2f} |")


def gibbs_step(sampler, points, logdensity):
    """(jitted (key, state) -> (state, gradients a chain), a tuned state at ``points``)."""
    import jax
    import jax.numpy as jnp

    warmup = sampler.init(points, logdensity, 10, jnp.ones(jax.tree.leaves(points)[0].shape[:1] + (logdensity.dataset.num_params,)))
    tuned = sampler.finish_warmup(warmup)
    tuned = tuned._replace(step_size=jnp.full_like(tuned.step_size, STEP_SIZE))

    @jax.jit
    def step(key, state):
        state, stats = sampler.step(key, state, logdensity)
        return state, stats.n_steps

    return step, tuned


if __name__ == "__main__":
    main()
