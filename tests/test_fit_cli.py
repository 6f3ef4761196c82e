"""python -m hblogit.fit end to end on tiny data, and its one-line errors."""

import json
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hblogit.fit import main

FAST = ["--chains", "2", "--warmup", "40", "--draws", "30", "--no-progress"]


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "bought": rng.integers(0, 2, n),
            "store": rng.choice(["north", "south", "east", "west"], n),
            "price": rng.normal(size=n),
            "promo": rng.normal(size=n),
        }
    )
    path = tmp_path_factory.mktemp("data") / "sales.csv"
    frame.to_csv(path, index=False)
    return path


def test_cli_writes_every_file(tmp_path, table_file, capsys):
    out = tmp_path / "run"
    code = main(["--data", str(table_file), "--outcome", "bought", "--group", "store", "--out", str(out), "--keep-groups", "2", *FAST])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"posterior.nc", "summary.csv", "trace.png", "run.json", "checkpoint"}
    tree = xr.open_datatree(out / "posterior.nc")
    assert tree["posterior"]["beta"].shape == (2, 30, 2)
    assert list(tree["group_moments"]["group"].values) == ["east", "north", "south", "west"]
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert {"mean", "sd", "eti89_lb", "eti89_ub", "ess_bulk", "ess_tail", "r_hat", "mcse_mean"} <= set(summary.columns)
    assert "beta[price]" in summary.index
    record = json.loads((out / "run.json").read_text())
    assert {"gradient_evaluations", "divergences", "min_ess_bulk", "min_ess_per_second_total", "timings"} <= set(record)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith(str(table_file)) and "Diagnostics:" in printed


def test_cli_fits_random_intercepts_only(tmp_path, table_file, capsys):
    """--covariates '' (or a table without covariate columns): summary and plots of alpha and
    sigma_alpha alone; beta and sigma_gamma are kept, empty."""
    out = tmp_path / "run"
    argv = ["--data", str(table_file), "--outcome", "bought", "--group", "store", "--covariates", "", "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    assert {"summary.csv", "trace.png", "posterior.nc"} <= {p.name for p in out.iterdir()}
    assert list(pd.read_csv(out / "summary.csv", index_col=0).index) == ["alpha", "sigma_alpha"]
    assert xr.open_datatree(out / "posterior.nc")["posterior"]["beta"].shape == (2, 30, 0)
    assert "covariates none (random intercepts only); N=300 G=4 K=0" in capsys.readouterr().out


def test_cli_preset_writes_recovery_plot(tmp_path, monkeypatch):
    from hblogit import presets

    monkeypatch.setitem(presets.PRESETS, "small", dict(num_obs=400, num_groups=20, num_covariates=2, seed=1))
    code = main(["--preset", "small", "--out", str(tmp_path), "--chunk-size", "7", *FAST])
    assert code == 0 and (tmp_path / "recovery.png").stat().st_size > 0
    assert json.loads((tmp_path / "run.json").read_text())["config"]["chunk_size"] == 7


def test_cli_default_preset_line_says_why(tmp_path, monkeypatch, capsys):
    from hblogit import presets

    monkeypatch.setitem(presets.PRESETS, "small", dict(num_obs=200, num_groups=10, num_covariates=1, seed=1))
    assert main(["--out", str(tmp_path), "--chains", "1", "--warmup", "5", "--draws", "5", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("preset 'small'") and "no GPU" in first


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "hblogit.fit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--preset" in result.stdout and "--sampler" in result.stdout
    assert "RuntimeWarning" not in result.stderr


def write(tmp_path, frame, name="d.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "frame,args,message",
    [
        (None, ["--data", "/nonexistent/file.csv", "--outcome", "y", "--group", "g"], "no such file"),
        (pd.DataFrame({"y": [0, 1], "g": [1, 2], "x": [0.1, 0.2]}), ["--outcome", "z", "--group", "g"], "z"),
        (pd.DataFrame({"y": [0, 2], "g": [1, 2], "x": [0.1, 0.2]}), ["--outcome", "y", "--group", "g"], "0"),
        (pd.DataFrame({"y": [0, 1], "g": [1, 2], "x": [0.1, np.nan]}), ["--outcome", "y", "--group", "g"], "x"),
        (pd.DataFrame({"y": [0, 1], "g": [1, 2], "x": [0.1, 0.2]}), ["--outcome", "y", "--group", "g", "--sampler", "nope"], "nope"),
        (pd.DataFrame({"y": [0, 1], "g": [1, 2], "x": [0.1, 0.2]}), ["--outcome", "y", "--group", "g", "--keep-groups", "a,b"], "keep-groups"),
    ],
)
def test_bad_cli_input_is_one_line_and_exit_2(tmp_path, frame, args, message):
    assert_one_line_error(tmp_path, frame, args, message)


def test_platform_gpu_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    """Asking for a GPU that JAX cannot see must not fall back to the CPU in silence."""
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU, so --platform gpu is legitimate here")
    assert_one_line_error(tmp_path, None, ["--preset", "small", "--platform", "gpu"], "JAX sees no GPU")


def assert_one_line_error(tmp_path, frame, args, message):
    if frame is not None:
        args = ["--data", str(write(tmp_path, frame)), *args]
    result = subprocess.run(
        [sys.executable, "-m", "hblogit.fit", *args, "--out", str(tmp_path / "o"), *FAST],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.stderr
