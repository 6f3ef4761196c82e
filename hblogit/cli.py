"""What every command-line tool shares: the data options, loading them, and error reporting.

    parser = argparse.ArgumentParser()
    add_data_arguments(parser)

    @cli_errors
    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        loaded = load_data(args, default_preset="small")
        ...
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
from jax.experimental.compilation_cache import compilation_cache

from .data import CovariateWarning, Dataset, Truth, simulate
from .io import load_table
from .presets import PRESETS
from .runner import SamplingError


class LoadedData(NamedTuple):
    dataset: Dataset
    truth: Truth | None  # known for a simulated preset, None for a file
    description: str  # one line: where the data came from and its sizes


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--preset`` or ``--data`` (with ``--outcome``, ``--group`` and optional ``--covariates``)."""
    options = parser.add_argument_group("data")
    source = options.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="a simulated problem from hblogit.presets")
    source.add_argument("--data", metavar="PATH", help="a .csv, .parquet or .npz table (see hblogit.io)")
    options.add_argument("--outcome", metavar="COL", help="the 0/1 outcome column (with --data)")
    options.add_argument("--group", metavar="COL", help="the group label column (with --data)")
    options.add_argument(
        "--covariates",
        metavar="A,B,C",
        type=_comma_list,
        help="covariate columns, comma-separated (with --data; default: every other numeric column; "
        "'' for none: random intercepts only)",
    )


def _comma_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def load_data(args: argparse.Namespace, default_preset: str = "small") -> LoadedData:
    """The data the options name; ``default_preset`` when neither ``--preset`` nor ``--data`` is given."""
    if args.data is None:
        stray = [flag for flag in ("outcome", "group", "covariates") if getattr(args, flag) is not None]
        if stray:
            raise ValueError(f"--{stray[0]} applies only to --data")
        return load_preset(args.preset or default_preset)
    missing = [flag for flag in ("outcome", "group") if getattr(args, flag) is None]
    if missing:
        raise ValueError(f"--data needs {' and '.join('--' + m for m in missing)}")
    dataset = load_table(args.data, args.outcome, args.group, args.covariates)
    description = (
        f"{args.data}: outcome {args.outcome!r}, group {args.group!r}, "
        f"covariates {', '.join(dataset.covariate_names) or 'none (random intercepts only)'}; {_sizes(dataset)}"
    )
    return LoadedData(dataset, None, description)


def load_preset(name: str) -> LoadedData:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose from {', '.join(sorted(PRESETS))}")
    simulated = simulate(**PRESETS[name])
    dataset = simulated.dataset()
    description = f"preset {name!r} (simulated, seed {PRESETS[name]['seed']}); {_sizes(dataset)}"
    return LoadedData(dataset, simulated.truth, description)


def _sizes(dataset: Dataset) -> str:
    return f"N={dataset.num_obs:,} G={dataset.num_groups:,} K={dataset.num_covariates}"


COMPILE_CACHE_ENV = "HBLOGIT_COMPILE_CACHE"


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="keep compiled programs in DIR, so that a rerun with the same sizes and options skips most "
        f"of its compilation; 'off' for none (default: ${COMPILE_CACHE_ENV}, else JAX's own cache if "
        "JAX_COMPILATION_CACHE_DIR names one, else ~/.cache/hblogit/jax)",
    )


def default_compile_cache() -> Path:
    """hblogit/jax under $XDG_CACHE_HOME, or under ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hblogit" / "jax"


def use_compile_cache(setting: str | None) -> None:
    """Point JAX's persistent compilation cache, for this process, at the folder that
    ``--compile-cache`` (``setting``) or its defaults name; "off" turns it off.

    A program that took JAX more than ``jax_persistent_cache_min_compile_time_secs`` (1 s by
    default) to compile is written there, and read back instead of compiled by a later run
    of the same sizes and options: at the small preset, the run's compile time falls from
    about 19 s to 3-4 s (experiments/RESULTS.md). Caching the many shorter programs too
    gained nothing there. A folder made here is private to the user: JAX runs what it finds
    there. A folder the user names (option or environment) that cannot be used is an error
    naming where it was named; the default one, a warning, and the run goes on without a
    cache.
    """
    if setting is not None:
        source = "--compile-cache"
    elif COMPILE_CACHE_ENV in os.environ:
        source, setting = COMPILE_CACHE_ENV, os.environ[COMPILE_CACHE_ENV]
    elif jax.config.jax_compilation_cache_dir:
        return  # the user's own JAX setting
    else:
        source, setting = None, str(default_compile_cache())
    folder = None if setting in ("off", "") else Path(setting)
    if folder is not None:
        problem = _unwritable(folder)
        if problem and source:
            raise ValueError(f"{source}: cannot use {folder}: {problem}")
        if problem:
            print(f"warning: no compile cache: cannot use {folder} ({problem})", file=sys.stderr)
            folder = None
    wanted = None if folder is None else str(folder)
    if jax.config.jax_compilation_cache_dir != wanted:
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", wanted)


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold the cache (made, private to the user, if missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        return error.strerror or str(error)
    return None if os.access(folder, os.W_OK | os.X_OK) else "not writable"


def _print_error(error: Exception) -> None:
    print(f"error: {_one_line(error) or type(error).__name__}", file=sys.stderr)


def cli_errors(main):
    """Wrap ``main(argv) -> int`` so that a bad input ends it with one line and exit status 2,
    and a warning about the data (``CovariateWarning``) prints as one line, ``warning: ...``.

    ``ValueError`` and ``FileNotFoundError`` are the user's mistakes (a missing column, an
    unreadable file): the user needs the message, not a traceback. A ``SamplingError`` (a
    chain reached a non-finite log-density mid-run) ends it with one line and exit status 1.
    Anything else is a bug and keeps its traceback; other warnings keep Python's format,
    which says where they arose.
    """

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        with warnings.catch_warnings():
            warnings.showwarning = _data_warnings_as_lines(warnings.showwarning)
            try:
                return main(*args, **kwargs)
            except (ValueError, FileNotFoundError) as error:
                _print_error(error)
                return 2
            except SamplingError as error:
                _print_error(error)
                return 1

    return wrapped


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _data_warnings_as_lines(show):
    """A ``warnings.showwarning`` that prints a ``CovariateWarning`` as one line on stderr
    and hands any other warning to ``show``."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CovariateWarning):
            print(f"warning: {_one_line(message)}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning
