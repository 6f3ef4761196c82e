"""``python -m hblogit.fit`` on a rented cloud GPU, with Modal.

    modal run -m hblogit.modal_app --preset seed                    # the post's problem, on an A100
    modal run -m hblogit.modal_app --gpu H100 --name run1 --preset seed --chains 4 --out runs/run1
    modal run -m hblogit.modal_app --profile --chains 4             # experiments/bench_gradient.py

The local entrypoint takes the CLI's options, plus ``--gpu`` (default A100), ``--name`` (the
run's folder in the volume; default: a timestamp) and ``--out`` (where the results are
downloaded; default runs/<name>). The GPU function writes checkpoints and results to the
Volume ``hblogit-runs`` under <name>/ and commits it after every checkpoint; when it is
retried (a preempted or failed container), or the same ``--name`` is run again, it resumes
from the last checkpoint there.

Modal stays here: the runner only accepts an ``on_checkpoint`` callable, and ``fit.main``
passes it through. The image pins hblogit's dependencies (with the ``gpu`` extra, the CUDA
build of JAX, and the ``reference`` extra, PyMC, for the profile) to the versions installed
where ``modal run`` is typed, so the GPU runs what the local tests ran.
"""

from __future__ import annotations

import argparse
import re
import runpy
import time
from importlib import metadata
from pathlib import Path

import modal

from . import checkpoint

APP_NAME = "hblogit"
VOLUME_NAME = "hblogit-runs"
VOLUME_PATH = "/runs"
DEFAULT_GPU = "A100"
TIMEOUT_S = 6 * 60 * 60
RETRIES = modal.Retries(max_retries=3, initial_delay=5.0, backoff_coefficient=1.0)
IMAGE_EXTRAS = ("gpu", "reference")
BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_gradient.py"
BENCH_REMOTE = "/root/experiments/bench_gradient.py"  # beside /root/hblogit, so BENCH there too


def pinned_requirements(extras=IMAGE_EXTRAS) -> list[str]:
    """hblogit's requirements and those of ``extras``, each pinned to the installed version."""
    pins = []
    for requirement in metadata.requires("hblogit") or []:
        spec, _, marker = requirement.partition(";")
        extra = re.search(r'extra == "([^"]+)"', marker)
        if marker.strip() and not (extra and extra.group(1) in extras):
            continue
        name, brackets = re.match(r"\s*([A-Za-z0-9._-]+)(\[[^\]]*\])?", spec).groups()
        try:
            pins.append(f"{name}{brackets or ''}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise RuntimeError(
                f"{name} is not installed here; the Modal image pins the versions installed where "
                f"`modal run` is typed: pip install -e '.[{','.join(extras)},modal]'"
            ) from None
    return pins


def _image() -> modal.Image:
    image = modal.Image.debian_slim(python_version="3.13")
    if modal.is_local():  # in the container the image is built already, and hblogit not installed
        image = image.uv_pip_install(*pinned_requirements())
    return image.add_local_file(BENCH, BENCH_REMOTE).add_local_python_source("hblogit", "reference")


app = modal.App(APP_NAME, image=_image())
runs = modal.Volume.from_name(VOLUME_NAME, create_if_missing=True)


def commit_volume(directory) -> None:
    """``on_checkpoint``: make what is written so far durable in the volume, when remote."""
    if not modal.is_local():
        runs.commit()


@app.function(gpu=DEFAULT_GPU, timeout=TIMEOUT_S, retries=RETRIES, volumes={VOLUME_PATH: runs})
def fit_run(argv: list[str], name: str, root: str = VOLUME_PATH) -> tuple[int, dict[str, bytes]]:
    """``python -m hblogit.fit *argv`` into ``root/name``, resuming from its checkpoint if one
    is there. Returns the exit code and the result files (name -> bytes; not the checkpoint)."""
    from .fit import main

    out = Path(root) / name
    checkpoints = out / "checkpoint"
    resume = ["--resume", str(checkpoints)] if checkpoint.exists(checkpoints) else []
    code = main([*argv, "--out", str(out), "--checkpoint-dir", str(checkpoints), *resume], on_checkpoint=commit_volume)
    commit_volume(out)
    files = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} if code == 0 else {}
    return code, files


@app.function(gpu=DEFAULT_GPU, timeout=60 * 60)
def profile_gradient(argv: list[str]) -> None:
    """experiments/bench_gradient.py with ``argv``; its tables go to the log."""
    _bench()["main"](argv)


def _bench() -> dict:
    """experiments/bench_gradient.py's functions (it is a script, not a module of the package)."""
    return runpy.run_path(str(BENCH))


def entry_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modal run -m hblogit.modal_app", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f'Modal GPU type: A100, H100, H200, "H100:4", ... (default: {DEFAULT_GPU})')
    parser.add_argument("--name", default=None, help="the run's folder in the volume (default: a timestamp)")
    parser.add_argument("--out", type=Path, default=None, help="local folder for the results (default: runs/NAME)")
    parser.add_argument("--profile", action="store_true", help="run experiments/bench_gradient.py with the other options instead of a fit")
    return parser


def parse_entry(arglist) -> tuple[argparse.Namespace, list[str]]:
    """The entry's own options, and the rest for ``python -m hblogit.fit`` (or, with
    ``--profile``, for bench_gradient.py), checked here so that a typo fails before a GPU is
    rented."""
    from .fit import build_parser

    options, rest = entry_parser().parse_known_args(list(arglist))
    if options.profile:
        _bench()["parse_args"](rest)
    else:
        build_parser().parse_args(rest)
    options.name = options.name or time.strftime("%Y%m%d-%H%M%S")
    options.out = options.out or Path("runs") / options.name
    return options, rest


def save_files(files: dict[str, bytes], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)


def on_gpu(function, gpu: str):
    """``function`` on ``gpu``: the type is fixed where a function is defined, so any other
    than the default is a ``with_options`` copy."""
    return function if gpu == DEFAULT_GPU else function.with_options(gpu=gpu)


@app.local_entrypoint()
def main(*arglist: str) -> None:
    options, rest = parse_entry(arglist)
    if options.profile:
        on_gpu(profile_gradient, options.gpu).remote(rest)
        return
    print(f"run {options.name!r} on {options.gpu}; checkpoints and results in volume {VOLUME_NAME!r} at {options.name}/")
    code, files = on_gpu(fit_run, options.gpu).remote(rest, options.name)
    if code:
        raise SystemExit(code)
    save_files(files, options.out)
    print(f"downloaded {', '.join(sorted(files))} to {options.out}/")
