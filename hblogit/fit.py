"""``hblogit.fit()``, and ``python -m hblogit.fit``: data -> sampler -> runner -> files.

Note: ``hblogit.fit`` (the package attribute) is the function, bound in ``__init__`` with
``from .fit import fit``; ``python -m hblogit.fit`` runs ``main`` here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import checkpoint, checks, results, runner, sharding
from .cli import add_compile_cache_argument, add_data_arguments, cli_errors, load_data, use_compile_cache
from .data import Dataset
from .model import LAYOUTS, choose_layout, make_logdensity
from .samplers import SAMPLERS, get_sampler

PRECISIONS = ("mixed", "float32", "float64")


def _versions() -> dict:
    names = ["hblogit", "jax", "jaxlib", "blackjax", "optax", "equinox", "numpy", "arviz"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def _resolve_keep_groups(keep_groups, num_groups: int) -> tuple[int, ...]:
    if isinstance(keep_groups, (int, np.integer)):
        if keep_groups < 0:
            raise ValueError(f"keep_groups must be >= 0, got {keep_groups}")
        return runner.default_keep_groups(num_groups, int(keep_groups)) if keep_groups else ()
    groups = tuple(int(g) for g in keep_groups)
    bad = [g for g in groups if not 0 <= g < num_groups]
    if bad:
        raise ValueError(f"keep_groups {bad} are not group indices in [0, {num_groups})")
    return groups


def _with_precision(dataset: Dataset, precision: str):
    """The dataset and the parameter dtype for a precision mode (see README, Precision)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return dataset.astype(jnp.float32), jnp.float32
    jax.config.update("jax_enable_x64", True)
    return (dataset.astype(jnp.float64) if precision == "float64" else dataset), jnp.float64


def _x64_for(precision: str):
    """The context a run of ``precision`` runs in: a float32 run turns JAX's x64 mode off
    for its duration, since with it on (after any mixed run in the same process) BlackJAX's
    constants from Python floats are float64 and clash with the float32 states; the others
    have switched it on (``_with_precision``)."""
    return jax.enable_x64(False) if precision == "float32" else contextlib.nullcontext()


def fit(
    dataset: Dataset,
    *,
    sampler: str = "nuts",
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    thin: int = 1,
    keep_groups=5,
    sampler_options: dict | None = None,
    precision: str = "mixed",
    chunk_size: int = 50,
    init_steps: int = 200,
    progress: bool = True,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    resume=None,
    on_checkpoint=None,
    devices: int | None = None,
    layout: str = "auto",
):
    """Sample the posterior; returns an ArviZ DataTree.

    ``posterior`` holds alpha, beta, sigma_alpha, sigma_gamma (constrained) and the group
    effects of ``keep_groups`` (a count of evenly spread groups, or group indices);
    ``group_moments`` holds every group's posterior mean and sd; ``sample_stats`` the
    per-draw statistics; ``attrs["hblogit_run"]`` the run record (JSON).

    ``precision``: "mixed" (default) keeps the data float32 and runs the parameters, the
    energies and every reduction in float64, which switches on JAX's x64 mode; "float32"
    runs everything in float32; "float64" everything in float64.

    Checkpoints: with ``checkpoint_dir`` (default: ``resume``'s directory, else none), the
    run writes a checkpoint there every ``checkpoint_every`` steps (warm-up steps and draws
    counted alike; default None: after the chunk that crosses 60 s since the last) and at
    the end, and calls ``on_checkpoint(directory)`` after each. ``resume`` (a checkpoint
    directory) goes on from its checkpoint, to the same draws as a run never stopped; it
    raises ``ValueError`` if the checkpoint was written for other data or another config.

    ``devices``: how many devices share the groups (``hblogit.sharding``); by default every
    device when JAX sees several GPUs, else 1.

    ``layout``: how the log-density lays out the data on one device (``make_logdensity``:
    "auto", "segment", "blocked" or "fused"); the run record names the one used.
    """
    chains, warmup, draws, thin, chunk_size, init_steps = (
        checks.integer(value, name, low)
        for value, name, low in (
            (chains, "chains", 1), (warmup, "warmup", 0), (draws, "draws", 1), (thin, "thin", 1),
            (chunk_size, "chunk_size", 1), (init_steps, "init_steps", 0),
        )
    )
    if checkpoint_every is not None:
        checkpoint_every = checks.integer(checkpoint_every, "checkpoint_every")
    digest = checkpoint.data_digest(dataset) if (checkpoint_dir or resume) else None
    devices = sharding.default_devices() if devices is None else checks.integer(devices, "devices")
    chosen_layout = choose_layout(dataset, layout)
    if devices > 1 and layout != "auto":
        raise ValueError(f"layout={layout!r} is for one device; {devices} devices use hblogit.sharding's own layout")
    dataset, dtype = _with_precision(dataset, precision)
    kernel = get_sampler(sampler, **(sampler_options or {}))
    keep_groups = _resolve_keep_groups(keep_groups, dataset.num_groups)
    config = runner.RunConfig(
        chains=chains,
        warmup=warmup,
        draws=draws,
        thin=thin,
        seed=seed,
        keep_groups=keep_groups,
        chunk_size=chunk_size,
        init_steps=init_steps,
        progress=progress,
        checkpoint_every=checkpoint_every,
    )
    identity = {
        **config.identity(),
        "sampler": sampler,
        "sampler_options": _resolved_options(kernel),
        "precision": precision,
        "devices": devices,
    }
    checkpoints = None
    if digest is not None:
        checkpoints = runner.Checkpoints(
            directory=Path(checkpoint_dir or resume),
            identity={"config": identity, "data_digest": digest, "versions": _versions()},
            resume_from=Path(resume) if resume else None,
            on_checkpoint=on_checkpoint,
        )
    with _x64_for(precision):
        if devices == 1:
            result = runner.run(kernel, make_logdensity(dataset, layout=chosen_layout), config, dtype=dtype, checkpoints=checkpoints)
        else:
            result = _run_sharded(kernel, sharding.make_sharded_logdensity(dataset, devices), config, dtype, checkpoints)
    device = jax.devices()[0]
    record = {
        "config": {**config._asdict(), **identity, "layout": chosen_layout if devices == 1 else "sharded"},
        "data": {"num_obs": dataset.num_obs, "num_groups": dataset.num_groups, "num_covariates": dataset.num_covariates},
        "versions": _versions(),
        "device": f"{device.platform}: {device.device_kind}" + (f" x {devices}" if devices > 1 else ""),
        "timings": result.timings,
        "compile_cache": jax.config.jax_compilation_cache_dir,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return results.to_datatree(result, dataset, record)


def _resolved_options(kernel) -> dict:
    """Every option of the sampler, defaults included, so that options left out and options
    given at their defaults name the same run."""
    return {f.name: getattr(kernel, f.name) for f in dataclasses.fields(kernel) if f.name != "name"}


def _run_sharded(kernel, logdensity: sharding.ShardedLogDensity, config: runner.RunConfig, dtype, checkpoints) -> runner.RunResult:
    """``runner.run`` in the padded group space, its group results mapped back to the groups."""
    slots = logdensity.group_slots
    padded = config._replace(keep_groups=tuple(int(slots[g]) for g in config.keep_groups))
    result = runner.run(kernel, logdensity, padded, dtype=dtype, checkpoints=checkpoints)
    real = lambda moments: {name: value[:, slots] for name, value in moments.items()}
    return result._replace(
        group_mean=real(result.group_mean),
        group_sd=real(result.group_sd),
        keep_groups=config.keep_groups,
        final_positions=logdensity.from_sharded(result.final_positions),
    )


def run_record(idata) -> dict:
    return json.loads(idata.attrs["hblogit_run"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hblogit.fit",
        description="Fit the hierarchical logistic regression by MCMC and write posterior, summary and plots.",
    )
    add_data_arguments(parser)
    parser.add_argument("--sampler", default="nuts", help=f"sampler name, one of: {', '.join(sorted(SAMPLERS))} (default: nuts)")
    parser.add_argument("--sampler-opt", action="append", default=[], metavar="KEY=VALUE", help="sampler option, repeatable")
    parser.add_argument("--chains", type=int, default=4, help="chains, in one compiled program: in lock step or one after another, as the sampler's chain_method says (default: 4)")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up (adaptation) steps per chain (default: 1000)")
    parser.add_argument("--draws", type=int, default=1000, help="kept draws per chain, after thinning (default: 1000)")
    parser.add_argument("--thin", type=int, default=1, help="keep one draw every THIN steps (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--keep-groups", default="5", help="a count of groups to keep every draw of, or comma-separated group indices")
    parser.add_argument("--precision", choices=PRECISIONS, default="mixed", help="see README, Precision (default: mixed)")
    parser.add_argument("--devices", type=int, default=None, help="devices to spread the groups over (default: every GPU when there are several, else 1)")
    parser.add_argument("--platform", choices=["cpu", "gpu"], default=None, help="JAX platform (default: JAX's choice)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="data layout of the log-density on one device: segment sums, dense blocks, or blocks summed by one fused GPU kernel (default: auto)",
    )
    add_compile_cache_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=50,
        metavar="STEPS",
        help="steps per compiled chunk: the progress bar and checkpoints move once a chunk (default: 50)",
    )
    options = parser.add_argument_group("checkpoints")
    options.add_argument("--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUT/checkpoint, or the --resume directory)")
    options.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="write a checkpoint every STEPS steps (warm-up steps and draws) (default: after the chunk that crosses 60 s since the last)",
    )
    options.add_argument("--resume", type=Path, default=None, metavar="DIR", help="go on from the checkpoint in DIR (same data and options)")
    return parser


def parse_sampler_options(pairs) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--sampler-opt takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _parse_keep_groups(text: str):
    try:
        return int(text) if "," not in text else [int(g) for g in text.split(",") if g]
    except ValueError:
        raise ValueError(f"--keep-groups takes a count or comma-separated group indices, got {text!r}") from None


@cli_errors
def main(argv=None, *, on_checkpoint=None) -> int:
    """The CLI; ``on_checkpoint(directory)`` is called after every checkpoint write (the
    Modal app commits its volume there)."""
    args = build_parser().parse_args(argv)
    if args.platform:
        jax.config.update("jax_platforms", "cuda" if args.platform == "gpu" else "cpu")
    on_gpu = jax.default_backend() == "gpu"
    if args.platform == "gpu" and not on_gpu:
        raise ValueError(
            f"--platform gpu: JAX sees no GPU here (its backend is {jax.default_backend()!r}); "
            "a GPU machine needs JAX's CUDA build: pip install 'hblogit[gpu]'"
        )
    use_compile_cache(args.compile_cache)
    loaded = load_data(args, default_preset="seed" if on_gpu else "small")
    reason = ""
    if not (args.data or args.preset):
        reason = " -- chosen because JAX sees a GPU" if on_gpu else " -- chosen because JAX sees no GPU (--preset seed for the post's problem)"
    print(loaded.description + reason, flush=True)
    out = args.out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    idata = fit(
        loaded.dataset,
        sampler=args.sampler,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        thin=args.thin,
        keep_groups=_parse_keep_groups(args.keep_groups),
        sampler_options=parse_sampler_options(args.sampler_opt),
        precision=args.precision,
        progress=not args.no_progress,
        chunk_size=args.chunk_size,
        checkpoint_dir=args.checkpoint_dir or (args.resume or out / "checkpoint"),
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        on_checkpoint=on_checkpoint,
        devices=args.devices,
        layout=args.layout,
    )
    write_outputs(idata, loaded.truth, out)
    return 0


def write_outputs(idata, truth, out: Path) -> None:
    """posterior.nc, summary.csv, trace.png, recovery.png (simulated data), run.json; console report."""
    out.mkdir(parents=True, exist_ok=True)
    table = results.summary(idata)
    verdict = results.diagnose(idata, table)
    record = run_record(idata)
    sampling_s = record["timings"]["sampling_s"]
    total_s = sum(record["timings"].values())
    record.update(
        gradient_evaluations=verdict.gradient_evaluations,
        warmup_gradient_evaluations=verdict.warmup_gradient_evaluations,
        divergences=verdict.divergences,
        divergences_by_chain=verdict.divergences_by_chain,
        first_divergence=verdict.first_divergence,
        warmup_divergences=verdict.warmup_divergences,
        min_ess_bulk=verdict.min_ess_bulk,
        min_ess_tail=verdict.min_ess_tail,
        max_r_hat=verdict.max_r_hat,
        min_ess_per_second_sampling=verdict.min_ess_bulk / sampling_s,
        min_ess_per_second_total=verdict.min_ess_bulk / total_s,
        wall_seconds=total_s,
        warnings=verdict.warnings,
    )
    idata.to_netcdf(out / "posterior.nc")
    table.to_csv(out / "summary.csv")
    results.plot_trace(idata, out / "trace.png")
    if truth is not None:
        results.plot_recovery(idata, truth, out / "recovery.png")
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    import pandas as pd

    with pd.option_context("display.max_rows", 200, "display.width", 160):
        print(table.round(4).to_string())
    timings = record["timings"]
    print(
        f"\nwall {total_s:.1f} s (starting points and compile {runner.start_seconds(timings):.1f}, "
        f"warm-up {timings['warmup_s']:.1f}, sampling {sampling_s:.1f}); "
        f"gradients {verdict.warmup_gradient_evaluations:,} warm-up + {verdict.gradient_evaluations:,} sampling; "
        f"min bulk ESS {verdict.min_ess_bulk:.0f} "
        f"({record['min_ess_per_second_total']:.2f}/s of wall time)"
    )
    print(results.format_verdict(verdict))
    print(f"wrote {out}/: posterior.nc summary.csv trace.png{' recovery.png' if truth is not None else ''} run.json")


if __name__ == "__main__":
    sys.exit(main())
