"""The committed reference posterior: its data still regenerates, it converged, its names are right."""

import json
import math
import subprocess
import sys

import pytest

import reference.posterior
from reference.posterior import data_digests, load_reference, scalar_names, truth_scalars

NAME = "small"


@pytest.fixture(scope="module")
def ref():
    return load_reference(NAME)


def test_loader_regenerates_the_recorded_data(ref):
    assert data_digests(ref.data) == ref.record["digests"]
    assert ref.data.X.shape == (ref.spec["num_obs"], ref.spec["num_covariates"])


def test_loader_rejects_changed_data(ref, tmp_path, monkeypatch):
    record = dict(ref.record, digests=dict(ref.record["digests"], y="<i8:" + "0" * 64))
    path = tmp_path / "posterior_tampered.json"
    path.write_text(json.dumps(record))
    monkeypatch.setattr(reference.posterior, "reference_path", lambda name: path)
    with pytest.raises(ValueError, match="no longer reproduces"):
        load_reference("tampered")


def test_loader_does_not_import_pymc():
    code = "import sys, reference.posterior as r; r.load_reference(); print('pymc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_record_has_every_global_scalar_with_finite_moments(ref):
    assert list(ref.moments) == scalar_names(ref.spec["num_covariates"])
    for name, (mean, sd, mcse) in ref.moments.items():
        assert math.isfinite(mean) and math.isfinite(sd) and sd > 0, name
        assert math.isfinite(mcse) and mcse > 0, name


def test_record_converged(ref):
    record = ref.record
    assert record["divergences"] == 0
    assert record["max_r_hat"] <= 1.01
    assert all(stats["r_hat"] <= 1.01 for stats in record["scalars"].values())


def test_record_is_reproducible(ref):
    record = ref.record
    assert record["command"].startswith("python -m reference.make_posterior")
    assert record["sampler"]["name"] in record["versions"]
    assert {"pymc", "pytensor", "numpy", "arviz", "python"} <= set(record["versions"])


def test_means_cover_the_simulation_truth(ref):
    """A swapped or misnamed scalar would sit many sds from its truth."""
    truth = truth_scalars(ref.data.truth)
    for name, (mean, sd, _) in ref.moments.items():
        assert abs(mean - truth[name]) < 4 * sd, (name, mean, sd, truth[name])
