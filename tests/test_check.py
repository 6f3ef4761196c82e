"""python -m hblogit.check on tiny data: it passes on the real model and catches a wrong one."""

import subprocess
import sys

import jax
import pandas as pd
import pytest

import hblogit.model
from hblogit.check import main
from tests.conftest import random_problem



@pytest.fixture
def tiny_csv(tmp_path):
    X, y, g = random_problem(11, num_obs=150, num_groups=6, num_covariates=2, empty_group=False)
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": y, "g": [f"shop-{k}" for k in g]}).to_csv(path, index=False)
    return path


def run_check(path, out, *extra):
    argv = ["--data", str(path), "--outcome", "y", "--group", "g", "--points", "3", "--adam-steps", "20"]
    return main([*argv, "--out", str(out), *extra])


def test_gradient_mode_passes_and_writes_tables(tiny_csv, tmp_path, capsys):
    assert run_check(tiny_csv, tmp_path / "out") == 0
    stdout = capsys.readouterr().out
    assert "PASS" in stdout and "mode-0" in stdout
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert set(errors.precision) == {"float64", "float32"}
    assert {"value", "gradient", *hblogit.model.Params._fields} <= set(errors.quantity)
    assert errors.ok.all()
    timing = pd.read_csv(tmp_path / "out" / "timing.csv")
    assert set(timing.implementation) == {"hblogit", "PyMC"} and (timing.median_ms > 0).all()
    markdown = (tmp_path / "out" / "check.md").read_text()
    assert "| float64 | z_gamma |" in markdown and "## timing" in markdown


def test_gradient_mode_without_covariates_reports_the_blocks_there_are(tiny_csv, tmp_path, capsys):
    """A table of the outcome and group alone: random intercepts only, so no beta, sigma_gamma
    or z_gamma rows (empty blocks have no error)."""
    bare = tmp_path / "bare.csv"
    pd.read_csv(tiny_csv)[["y", "g"]].to_csv(bare, index=False)
    assert run_check(bare, tmp_path / "out") == 0
    assert "covariates none (random intercepts only)" in capsys.readouterr().out
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert set(errors.quantity) == {"value", "gradient", "alpha", "log_sigma_alpha", "z_alpha"} and errors.ok.all()


def test_gradient_mode_fails_on_a_wrong_prior_and_names_the_block(tiny_csv, tmp_path, capsys, monkeypatch):
    """beta ~ Normal(0, 2) instead of Normal(0, 1): the beta gradient, and only it, is wrong."""
    try:
        with monkeypatch.context() as patch:
            patch.setattr(hblogit.model, "PRIOR_SD_BETA", 2.0)
            jax.clear_caches()  # the constant is read when the log-density is traced
            status = run_check(tiny_csv, tmp_path / "out")
    finally:
        jax.clear_caches()
    assert status == 1
    fail_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL"))
    assert "float64" in fail_line and "beta" in fail_line
    assert not any(block in fail_line for block in ("alpha", "sigma", "z_"))
    errors = pd.read_csv(tmp_path / "out" / "errors.csv").set_index(["precision", "quantity"])
    assert not errors.loc[("float64", "beta"), "ok"] and errors.loc[("float64", "z_gamma"), "ok"]


def test_missing_pymc_names_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pymc", None)  # makes `import pymc` raise ImportError
    assert main(["--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'hblogit[reference]'" in err and "Traceback" not in err


def test_bad_data_is_one_line_and_status_2(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "none.csv"), "--outcome", "y", "--group", "g"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such file") and err.count("\n") == 1


def test_posterior_mode_refuses_large_data_without_force(tiny_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("hblogit.check.POSTERIOR_MAX_GROUPS", 5)
    assert run_check(tiny_csv, tmp_path / "out", "--mode", "posterior") == 2
    err = capsys.readouterr().err
    assert "--force" in err and "G = 6" in err


def test_import_hblogit_does_not_import_pymc():
    code = "import sys, hblogit, hblogit.check, hblogit.cli; print('pymc' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_posterior_mode_agrees_with_pymc_and_writes_tables(tiny_csv, tmp_path, capsys):
    argv = ["--data", str(tiny_csv), "--outcome", "y", "--group", "g", "--mode", "posterior"]
    status = main([*argv, "--chains", "4", "--warmup", "500", "--draws", "500", "--out", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "posterior.csv")
    assert list(table.parameter) == ["alpha", "beta[a]", "beta[b]", "sigma_alpha", "sigma_gamma[a]", "sigma_gamma[b]"]
    assert {"mean_hblogit", "mean_pymc", "z", "ok"} <= set(table.columns) and table.ok.all()
    assert "## posterior" in (tmp_path / "out" / "check.md").read_text()
