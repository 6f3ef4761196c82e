"""hblogit.modal_app offline: no network, no Modal token. The functions' bodies run in-process."""

import subprocess
import sys

import modal
import pytest
import xarray as xr

from hblogit import checkpoint, presets
from hblogit import modal_app as m

TINY = ["--preset", "small", "--chains", "2", "--warmup", "20", "--draws", "10", "--no-progress", "--checkpoint-every", "10"]
RESULTS = {"posterior.nc", "summary.csv", "trace.png", "recovery.png", "run.json"}

pytestmark = pytest.mark.filterwarnings("ignore:The fit_run function is executing locally")


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "small", dict(num_obs=300, num_groups=12, num_covariates=2, seed=1))


class FakeVolume:
    def __init__(self):
        self.commits = 0

    def commit(self):
        self.commits += 1


def test_app_defines_its_functions_without_a_token(tmp_path):
    assert isinstance(m.app, modal.App) and m.app.name == "hblogit"
    assert isinstance(m.fit_run, modal.Function) and isinstance(m.profile_gradient, modal.Function)
    assert isinstance(m.main, modal.app.LocalEntrypoint)
    assert m.on_gpu(m.fit_run, "H100") is not m.fit_run
    assert m.on_gpu(m.fit_run, m.DEFAULT_GPU) is m.fit_run


def test_core_never_imports_modal():
    code = "import sys; sys.modules['modal'] = None; import hblogit, hblogit.fit, hblogit.runner, hblogit.checkpoint; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_image_pins_every_dependency_with_the_cuda_build():
    pins = m.pinned_requirements()
    assert all("==" in pin for pin in pins)
    names = {pin.split("==")[0] for pin in pins}
    assert {"jax", "jax[cuda12]", "blackjax", "arviz", "pymc"} <= names and "pytest" not in names


def posterior(path, files):
    path.write_bytes(files["posterior.nc"])
    return xr.open_datatree(path)["posterior"].to_dataset()


def test_fit_run_writes_results_resumes_and_commits_only_when_remote(tiny_preset, tmp_path, monkeypatch):
    volume = FakeVolume()
    monkeypatch.setattr(m, "runs", volume)
    code, files = m.fit_run.local(TINY, "local", root=str(tmp_path))
    assert code == 0 and set(files) == RESULTS and volume.commits == 0
    assert (tmp_path / "local" / "posterior.nc").read_bytes() == files["posterior.nc"]
    finished = checkpoint.read_manifest(tmp_path / "local" / "checkpoint")
    assert (finished["phase"], finished["step"]) == ("sampling", 10)

    # called again under the same name (a retry): resumes from the checkpoint there
    code, again = m.fit_run.local(TINY, "local", root=str(tmp_path))
    assert code == 0 and checkpoint.read_manifest(tmp_path / "local" / "checkpoint")["arrays"] == finished["arrays"]
    first, second = (posterior(tmp_path / name, result) for name, result in (("first.nc", files), ("second.nc", again)))
    xr.testing.assert_equal(first, second)  # the values; attrs hold creation times

    monkeypatch.setattr(modal, "is_local", lambda: False)  # as in a Modal container
    assert m.fit_run.local(TINY, "remote", root=str(tmp_path))[0] == 0
    assert volume.commits == 2 + 1  # a checkpoint after each chunk (all warm-up, all draws), then the results


def test_fit_run_reports_a_bad_input(tiny_preset, tmp_path):
    code, files = m.fit_run.local([*TINY, "--sampler", "nope"], "bad", root=str(tmp_path))
    assert code == 2 and files == {}


def test_parse_entry_splits_and_checks_the_options():
    options, rest = m.parse_entry(["--gpu", "H100:4", "--preset", "seed", "--chains", "4", "--name", "a"])
    assert (options.gpu, options.name, str(options.out), options.profile) == ("H100:4", "a", "runs/a", False)
    assert rest == ["--preset", "seed", "--chains", "4"]
    options, rest = m.parse_entry(["--profile", "--chains", "4"])
    assert options.profile and options.gpu == "A100" and rest == ["--chains", "4"] and options.name
    with pytest.raises(SystemExit):
        m.parse_entry(["--preset", "seed", "--chians", "4"])


def test_save_files(tmp_path):
    m.save_files({"run.json": b"{}", "summary.csv": b"a,b\n"}, tmp_path / "out")
    assert (tmp_path / "out" / "summary.csv").read_bytes() == b"a,b\n"


def test_profile_runs_the_gradient_benchmark(capsys):
    m.profile_gradient.local(["--smoke", "--skip-pymc"])
    assert "hblogit (segment)" in capsys.readouterr().out
