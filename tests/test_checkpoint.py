"""Checkpoints and resume: a stopped run, resumed, draws exactly what a run never stopped draws.

Bitwise on the CPU: every step's key is fold_in(phase key, step) and a resume goes on at
the chunk boundary where its checkpoint was written.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

import hblogit
from hblogit import checkpoint
from hblogit.fit import main

GROUPS = ("posterior", "sample_stats", "warmup_sample_stats", "group_moments")
OPTIONS = dict(chains=2, warmup=30, draws=20, seed=7, progress=False, chunk_size=8)


class Crash(Exception):
    """Stands for the process dying at that point."""


def tiny_data(seed=5):
    return hblogit.simulate(num_obs=300, num_groups=12, num_covariates=2, seed=seed).dataset()


def assert_same_draws(first, second):
    for group in GROUPS:
        for name in first[group].data_vars:
            np.testing.assert_array_equal(first[group][name].values, second[group][name].values, err_msg=f"{group}/{name}")


def crash_after(phase, step):
    """on_checkpoint that lets the run die once the checkpoint at (phase, >= step) is written."""

    def on_checkpoint(directory):
        manifest = checkpoint.read_manifest(directory)
        if manifest["phase"] == phase and manifest["step"] >= step:
            raise Crash

    return on_checkpoint


@pytest.fixture(scope="module")
def straight():
    """The run never stopped, and without checkpoints."""
    return hblogit.fit(tiny_data(), **OPTIONS)


@pytest.mark.parametrize("phase,step", [("warmup", 16), ("sampling", 8)])
def test_resume_gives_the_same_draws(straight, tmp_path, phase, step):
    with pytest.raises(Crash):
        hblogit.fit(tiny_data(), **OPTIONS, checkpoint_dir=tmp_path, checkpoint_every=8, on_checkpoint=crash_after(phase, step))
    manifest = checkpoint.read_manifest(tmp_path)
    assert (manifest["phase"], manifest["step"]) == (phase, step)
    assert manifest["config"]["chains"] == 2 and manifest["data_digest"] == checkpoint.data_digest(tiny_data())
    assert manifest["versions"]["jax"]
    resumed = hblogit.fit(tiny_data(), **OPTIONS, resume=tmp_path)
    assert_same_draws(straight, resumed)
    assert checkpoint.read_manifest(tmp_path)["step"] == OPTIONS["draws"]  # the final checkpoint


def half_written_arrays(monkeypatch):
    """The arrays file's write dies half-way through."""
    savez = np.savez

    def dying_savez(file, **arrays):
        whole = io.BytesIO()
        savez(whole, **arrays)
        file.write(whole.getvalue()[: whole.tell() // 2])
        raise Crash

    monkeypatch.setattr(np, "savez", dying_savez)


def manifest_never_renamed(monkeypatch):
    """The arrays file is in place, the new manifest written but not yet renamed."""
    replace = os.replace

    def dying_replace(source, target):
        if str(target).endswith(checkpoint.MANIFEST):
            raise Crash
        replace(source, target)

    monkeypatch.setattr(os, "replace", dying_replace)


@pytest.mark.parametrize("interrupt", [half_written_arrays, manifest_never_renamed])
def test_interrupted_write_keeps_the_last_checkpoint(straight, tmp_path, monkeypatch, interrupt):
    def on_checkpoint(directory):
        if checkpoint.read_manifest(directory)["phase"] == "sampling":
            interrupt(monkeypatch)  # the next write dies

    with pytest.raises(Crash):
        hblogit.fit(tiny_data(), **OPTIONS, checkpoint_dir=tmp_path, checkpoint_every=8, on_checkpoint=on_checkpoint)
    monkeypatch.undo()
    assert checkpoint.read_manifest(tmp_path)["phase"] == "sampling"
    (tmp_path / f"{checkpoint.TEMPORARY_PREFIX}left-by-a-kill").write_bytes(b"PK\x03\x04 truncated")
    resumed = hblogit.fit(tiny_data(), **OPTIONS, resume=tmp_path)
    assert_same_draws(straight, resumed)
    manifest = checkpoint.read_manifest(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {checkpoint.MANIFEST, manifest["arrays"]}


@pytest.fixture(scope="module")
def finished_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished")
    hblogit.fit(tiny_data(), **OPTIONS, checkpoint_dir=directory)
    return directory


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(data_seed=6), "written for other data"),
        (dict(chains=3), "chains=2; this run has chains=3"),
        (dict(draws=21), "draws=20; this run has draws=21"),
        (dict(seed=8), "seed=7"),
        (dict(thin=2), "thin=1"),
        (dict(keep_groups=[1]), "keep_groups="),
        (dict(sampler_options={"max_num_doublings": 5}), "max_num_doublings"),
        (dict(precision="float64"), "precision='mixed'"),
    ],
)
def test_resume_refuses_other_data_or_config(finished_checkpoint, change, message):
    data = tiny_data(change.pop("data_seed", 5))
    with pytest.raises(ValueError, match="cannot resume from") as error:
        hblogit.fit(data, **{**OPTIONS, **change}, resume=finished_checkpoint)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint in"):
        hblogit.fit(tiny_data(), **OPTIONS, resume=tmp_path)


def test_resuming_a_finished_run_runs_nothing_more(straight, finished_checkpoint):
    before = checkpoint.read_manifest(finished_checkpoint)
    assert_same_draws(straight, hblogit.fit(tiny_data(), **OPTIONS, resume=finished_checkpoint))
    assert checkpoint.read_manifest(finished_checkpoint)["arrays"] == before["arrays"]  # nothing rewritten


def test_options_at_their_defaults_name_the_same_run(finished_checkpoint):
    hblogit.fit(tiny_data(), **OPTIONS, sampler_options={"max_num_doublings": 10}, resume=finished_checkpoint)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    """float32 covariates, which stay float32 whether or not JAX's x64 mode is on (it is in
    this process, from conftest, and not in ``python -m hblogit.fit`` when it loads data)."""
    sim = hblogit.simulate(num_obs=300, num_groups=12, num_covariates=2, seed=5)
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, y=sim.y, g=sim.group_idx, X=sim.X.astype(np.float32))
    return path


def cli_args(table_file, out):
    data = ["--data", str(table_file), "--outcome", "y", "--group", "g"]
    return [*data, "--chains", "2", "--warmup", "100", "--draws", "100", "--seed", "3", "--no-progress", "--out", str(out)]


def wait_for(path, process, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_killed_cli_run_resumes_to_the_same_draws(table_file, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, "-m", "hblogit.fit", *cli_args(table_file, killed), "--checkpoint-every", "50"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(killed / "checkpoint" / checkpoint.MANIFEST, process)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    manifest = checkpoint.read_manifest(killed / "checkpoint")
    assert (manifest["phase"], manifest["step"]) != ("sampling", 100), "killed after the last checkpoint"
    assert main([*cli_args(table_file, killed), "--resume", str(killed / "checkpoint")]) == 0
    assert main(cli_args(table_file, straight)) == 0
    resumed, whole = (xr.open_datatree(run / "posterior.nc") for run in (killed, straight))
    assert_same_draws(resumed, whole)
    assert json.loads((killed / "run.json").read_text())["timings"]["initialisation_s"] > 0


def test_cli_refusal_is_one_line(table_file, tmp_path, finished_checkpoint, capsys):
    assert main([*cli_args(table_file, tmp_path), "--resume", str(finished_checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: cannot resume from") and "\n" not in error
