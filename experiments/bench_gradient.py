"""Time one log-density value-and-gradient at the post's size, hblogit against PyMC.

    python experiments/bench_gradient.py [--platform cpu|gpu] [--chains C] [--repeats R] [--skip-pymc]
                                         [--layouts L,...] [--gradient-only]

Contenders, in one process, on the same data and at the same float32 point:
  hblogit (L)      jax.jit(jax.value_and_grad(make_logdensity(dataset, layout=L))), vmapped over
                   C chains when C > 1; by default the layout "auto" picks is listed first, then
                   the others (on a GPU also "fused", hblogit.fused's one-pass kernel);
                   --layouts names them instead, in order
  leapfrog         one BlackJAX velocity-Verlet step (diagonal metric) with the auto layout:
                   the gradient plus the sampler's own vector work, timed over a scan of
                   LEAPFROG_STEPS steps; its "per chain" column is per chain and step
  NUTS tree        one BlackJAX NUTS transition (the kernel hblogit's nuts runs) with a step
                   size too small to turn, so every tree has NUTS_DEPTH doublings: 2^NUTS_DEPTH
                   gradients (31 leapfrog steps and the start); its "per chain" column is per
                   chain and gradient, so against the leapfrog row it is NUTS' own overhead;
                   with C > 1, once vmapped and once sequential (jax.lax.map), the two
                   chain methods of hblogit's nuts
  interweave,      the scale moves nuts and hmc make after every transition (hblogit.moves):
  transport        interweave (no likelihood), and one pass of transport_scales (a few O(N)
                   passes per family, in the layout "auto" picks; a transition makes
                   transport_passes of them); in the sampler's dtype, vmapped over C
                   chains as the gradient is
  pymc-dlogp       PyMC's model.compile_dlogp() (PyTensor's default backend), the post's CPU
                   number; CPU runs only (it never uses the accelerator)
  pymc-jax         jax.jit(jax.value_and_grad(get_jaxified_logp(model))), the post's GPU number
PyMC evaluates one chain; the "per chain" column divides by the chains each call evaluates.
--gradient-only keeps the hblogit and PyMC rows. Each contender's first call (its compile)
is reported on stderr as it ends, so a compile that does not end shows whose it is.

Timing: three rounds, each timing every contender for R back-to-back calls (see
interleaved_medians); medians over all rounds are reported.

"Floor" is the fraction of the memory-bandwidth floor reached: the bytes any evaluation must
move, divided by the bandwidth measured here (a large array copy, reported in the header),
over the median time. The bytes counted are X and y read once (shared by all chains), and per
chain the parameters read once and the gradient written once:
    4 N (K + 1) + 2 C P b        (float32 data; P parameters of b bytes each)
The blocked layout in fact reads X about twice, padded by ~9% at the post's size. The copy
that measures the bandwidth writes as much as it reads, and on a CPU a pass that only reads
streams faster than that, so the column can pass 0.5 (0.72-0.87 on the 2-core CPU in RESULTS).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def benchmark_parser(description, *, chains: int, chains_help: str, repeats: int) -> argparse.ArgumentParser:
    """The options the benchmarks here share: the platform, the problem's size (the post's by
    default), chains, repeats and --smoke (see ``smoke_sized``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=["cpu", "gpu"], default=None, help="JAX platform (default: JAX's choice)")
    parser.add_argument("--num-obs", type=int, default=1_000_000)
    parser.add_argument("--num-groups", type=int, default=100_000)
    parser.add_argument("--num-covariates", type=int, default=20)
    parser.add_argument("--chains", type=int, default=chains, help=chains_help)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per contender and round")
    parser.add_argument("--smoke", action="store_true", help="a tiny size, to check the script runs")
    return parser


def smoke_sized(args, repeats: int):
    """``args`` at the tiny size and ``repeats`` if --smoke asked for them."""
    if args.smoke:
        args.num_obs, args.num_groups, args.repeats = 20_000, 2_000, repeats
    return args


def parse_args(argv=None):
    parser = benchmark_parser(__doc__, chains=1, chains_help="chains evaluated at once (vmap) by hblogit", repeats=10)
    parser.add_argument("--skip-pymc", action="store_true", help="time hblogit alone (no PyMC installed)")
    parser.add_argument("--layouts", default=None,
                        help="comma-separated hblogit layouts to time, in order (default: auto's pick, then the others)")
    parser.add_argument("--gradient-only", action="store_true", help="no leapfrog, NUTS or scale-move rows")
    args = smoke_sized(parser.parse_args(argv), repeats=3)
    if args.layouts is not None:
        args.layouts = args.layouts.split(",")
        unknown = [layout for layout in args.layouts if layout not in LAYOUTS]
        if unknown:
            parser.error(f"--layouts: unknown {', '.join(unknown)} (choose from {', '.join(LAYOUTS)})")
    return args


LAYOUTS = ("auto", "blocked", "segment", "fused")


def first_call_seconds(name, fn):
    """Seconds of fn's first call (its compile included), also reported on stderr at once."""
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"# first call of {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    return seconds


def interleaved_medians(fns, repeats, rounds=3):
    """Median wall time of each fn over ``rounds`` rounds of ``repeats`` back-to-back calls.

    Back to back, as a sampler calls its gradient, so each contender runs with its own data
    in cache (after one untimed call per round); the rounds alternate contenders so that
    load from other processes falls on all of them alike.
    """
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, record in zip(fns, times):
            fn()
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def copy_bandwidth(jax, repeats, num_bytes=512 * 2**20):
    """Bytes per second of y = 2 x over a float32 array of ``num_bytes`` (read + write)."""
    x = jax.numpy.ones(num_bytes // 4, jax.numpy.float32)
    double = jax.jit(lambda x: 2 * x)
    (seconds,) = interleaved_medians([lambda: jax.block_until_ready(double(x))], repeats, rounds=1)
    return 2 * num_bytes / seconds


def floor_bytes(args, num_params, param_bytes):
    return 4 * args.num_obs * (args.num_covariates + 1) + 2 * args.chains * num_params * param_bytes


def main(argv=None):
    args = parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.platform == "gpu" else "cpu"
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hblogit
    from hblogit.model import choose_layout

    sim = hblogit.simulate(args.num_obs, args.num_groups, args.num_covariates, seed=827)
    dataset = sim.dataset()
    point = hblogit.init_params(jax.random.key(0), dataset, radius=0.5, dtype=jnp.float32)
    single_point = point
    if args.chains > 1:
        point = jax.tree.map(lambda x: jnp.broadcast_to(x, (args.chains, *x.shape)), point)

    def block(result):
        return jax.block_until_ready(result)

    contenders = []  # (name, chains per call, fn)
    auto = choose_layout(dataset)
    on_gpu = jax.default_backend() == "gpu"
    if args.layouts is None:  # fused runs its kernel on a GPU only (on a CPU, Pallas' interpreter)
        others = ["blocked", "segment"] + (["fused"] if on_gpu else [])
        args.layouts = [auto, *(layout for layout in others if layout != auto)]
    elif "fused" in args.layouts and not on_gpu:
        sys.exit("bench_gradient.py: the fused layout is timed on a GPU only (on a CPU it runs in Pallas' interpreter)")
    for layout in args.layouts:
        value_and_grad = jax.value_and_grad(hblogit.make_logdensity(dataset, layout=layout))
        value_and_grad = jax.jit(jax.vmap(value_and_grad) if args.chains > 1 else value_and_grad)
        contenders.append((f"hblogit ({layout})", args.chains, lambda f=value_and_grad: block(f(point))))
    moves = {}
    if not args.gradient_only:
        auto_logdensity = hblogit.make_logdensity(dataset)
        contenders += sampler_contenders(auto_logdensity, dataset.num_params, auto, args.chains, point, block)
        moves = scale_moves(auto_logdensity, auto)
    for name, move in moves.items():
        move = jax.jit(jax.vmap(move) if args.chains > 1 else move)
        contenders.append((name, args.chains, lambda f=move: block(f(point))))
    if not args.skip_pymc:
        with_pytensor = jax.default_backend() == "cpu"
        contenders += pymc_contenders(sim, jax.tree.map(np.asarray, single_point), block, with_pytensor)

    first = [first_call_seconds(name, fn) for name, _, fn in contenders]
    medians = interleaved_medians([fn for _, _, fn in contenders], args.repeats)
    bandwidth = copy_bandwidth(jax, args.repeats)
    floor_s = floor_bytes(args, dataset.num_params, 4) / bandwidth

    device = jax.devices()[0]
    print(f"# value-and-gradient, N={args.num_obs:,} G={args.num_groups:,} K={args.num_covariates}, float32, "
          f"chains={args.chains}, 3 rounds of {args.repeats} repeats")
    print(f"# device: {device.platform} ({device.device_kind}); host: {platform.node()} {os.cpu_count()} cores; "
          f"jax {jax.__version__}, python {sys.version.split()[0]}")
    print(f"# copy bandwidth {bandwidth / 1e9:.1f} GB/s; floor {floor_bytes(args, dataset.num_params, 4) / 1e6:.0f} MB "
          f"= {floor_s * 1e3:.1f} ms")
    print("| contender | median (ms) | per chain (ms) | first call incl. compile (s) | time / hblogit | floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = medians[0] / args.chains
    for (name, chains, _), seconds, first_s in zip(contenders, medians, first):
        per_chain = seconds / chains
        fraction = f"{floor_s / seconds:.2f}" if chains == args.chains and name not in moves else "-"
        print(f"| {name} | {seconds * 1e3:.2f} | {per_chain * 1e3:.2f} | {first_s:.2f} | {per_chain / base:.2f} | {fraction} |")


def sampler_contenders(logdensity, num_params, layout, chains, point, block):
    """The leapfrog and NUTS-tree rows: (name, chain-steps per call, fn)."""
    import jax
    import numpy as np

    trajectory = jax.jit(leapfrog_trajectory(logdensity, num_params))
    trajectory = jax.jit(jax.vmap(trajectory)) if chains > 1 else trajectory
    contenders = [(f"{LEAPFROG_STEPS} leapfrog steps ({layout})", chains * LEAPFROG_STEPS, lambda: block(trajectory(point)))]
    tree = nuts_tree(logdensity, num_params)
    trees = {"": jax.jit(tree)}
    if chains > 1:  # the two chain methods of hblogit's nuts (samplers/base.py, each_chain)
        trees = {", vmap": jax.jit(jax.vmap(tree)), ", sequential": jax.jit(lambda p: jax.lax.map(tree, p))}
    for method, batched in trees.items():
        steps = np.asarray(batched(point)[1])
        if np.any(steps != 2**NUTS_DEPTH - 1):
            print(f"# warning: NUTS trees took {np.unique(steps).tolist()} leapfrog steps, not {2**NUTS_DEPTH - 1}")
        name = f"NUTS tree, depth {NUTS_DEPTH} ({layout}{method})"
        contenders.append((name, chains * 2**NUTS_DEPTH, lambda f=batched: block(f(point))))
    return contenders


LEAPFROG_STEPS = 20


def leapfrog_trajectory(logdensity, num_params):
    """position -> log-density after LEAPFROG_STEPS velocity-Verlet steps, as NUTS takes them."""
    import jax
    import jax.numpy as jnp
    from blackjax.mcmc import integrators, metrics

    metric = metrics.default_metric(jnp.ones(num_params, jnp.float32))
    step = integrators.velocity_verlet(logdensity, metric.kinetic_energy)

    def trajectory(position):
        value, grad = jax.value_and_grad(logdensity)(position)
        state = integrators.IntegratorState(position, jax.tree.map(jnp.zeros_like, position), value, grad)
        state = jax.lax.fori_loop(0, LEAPFROG_STEPS, lambda _, s: step(s, jnp.float32(1e-3)), state)
        return state.logdensity

    return trajectory


NUTS_DEPTH = 5


def nuts_tree(logdensity, num_params):
    """position -> (log-density, leapfrog steps) after one NUTS transition whose tree doubles
    NUTS_DEPTH times: at a step size of 1e-5 the trajectory never turns. The parameters are
    in JAX's default float (float64 under x64, the sampler's dtype in mixed precision, where
    BlackJAX's NUTS needs its energies and weights in one dtype)."""
    import blackjax
    import jax
    import jax.numpy as jnp

    dtype = jnp.result_type(float)  # float64 under x64, as hblogit.fit's mixed precision runs NUTS
    kernel = blackjax.nuts.build_kernel()
    inverse_mass_matrix = jnp.ones(num_params, dtype)

    def transition(position):
        position = jax.tree.map(lambda x: x.astype(dtype), position)
        state = blackjax.nuts.init(position, logdensity)
        state, info = kernel(jax.random.key(0), state, logdensity, jnp.asarray(1e-5, dtype), inverse_mass_matrix, NUTS_DEPTH)
        return state.logdensity, info.num_integration_steps

    return transition


def scale_moves(logdensity, layout):
    """name -> position -> position, for each move of hblogit.moves, in the sampler's dtype
    (float64 under x64, as for nuts_tree), over the rows in ``logdensity``'s layout. The
    transport's step sds are a plausible 0.1."""
    import jax
    import jax.numpy as jnp

    from hblogit import moves

    dtype = jnp.result_type(float)
    log_scale_sds = jnp.full(logdensity.dataset.num_covariates + 1, 0.1, dtype)

    def in_dtype(move):
        return lambda position: move(jax.random.key(0), jax.tree.map(lambda x: x.astype(dtype), position))[0]

    def transport(key, position):
        return moves.transport_scales(key, position, logdensity.data, log_scale_sds)

    return {"interweave": in_dtype(moves.interweave), f"transport, one pass ({layout})": in_dtype(transport)}


def pymc_contenders(sim, point, block, with_pytensor: bool):
    import jax
    import pytensor

    pytensor.config.floatX = "float32"
    from pymc.sampling.jax import get_jaxified_logp

    from reference.model import build_model, params_to_point

    model = build_model(sim.X, sim.y, sim.group_idx, num_groups=sim.truth.alpha_group.shape[0])
    pymc_point = params_to_point(point, dtype="float32")
    values = [jax.numpy.asarray(pymc_point[v.name]) for v in model.value_vars]
    jax_value_and_grad = jax.jit(jax.value_and_grad(get_jaxified_logp(model)))
    contenders = [("pymc-jax (jaxified logp)", 1, lambda: block(jax_value_and_grad(values)))]
    if with_pytensor:
        dlogp = model.compile_dlogp()
        contenders.insert(0, ("pymc-dlogp (PyTensor)", 1, lambda: dlogp(pymc_point)))
    return contenders


if __name__ == "__main__":
    main()
