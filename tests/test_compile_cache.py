"""``--compile-cache``: JAX's persistent compilation cache for ``python -m hblogit.fit``."""

import json

import jax
import numpy as np
import pytest
import xarray as xr
from jax.experimental.compilation_cache import compilation_cache

from hblogit.cli import COMPILE_CACHE_ENV, default_compile_cache, use_compile_cache
from hblogit.fit import main

CACHE_HIT = "/jax/compilation_cache/cache_hits"


@pytest.fixture(autouse=True)
def jax_cache_as_found(monkeypatch):
    """The process's cache settings back as they were: ``use_compile_cache`` changes them."""
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    found = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    yield
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", found[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", found[1])


def fit_tiny(out, *extra):
    args = ["--preset", "small", "--chains", "2", "--warmup", "20", "--draws", "10", "--no-progress"]
    assert main([*args, "--out", str(out), *extra]) == 0
    return xr.open_datatree(out / "posterior.nc"), json.loads((out / "run.json").read_text())


def test_a_rerun_reads_its_programs_back_and_draws_the_same(tmp_path, tiny_preset):
    cache = tmp_path / "cache"
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny programs compile fast
    jax.clear_caches()  # so that this process compiles, and writes, every program of the run
    first, record = fit_tiny(tmp_path / "first", "--compile-cache", str(cache))
    assert record["compile_cache"] == str(cache) and any(cache.iterdir())
    assert cache.stat().st_mode & 0o077 == 0  # private: JAX runs what it finds there
    hits = []
    listener = lambda event, **_: hits.append(event) if event == CACHE_HIT else None  # noqa: E731
    jax.clear_caches()
    jax.monitoring.register_event_listener(listener)
    try:
        second, _ = fit_tiny(tmp_path / "second", "--compile-cache", str(cache))
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert len(hits) >= 2  # at least the warm-up and the sampling programs
    for name in ("alpha", "beta", "sigma_gamma"):
        np.testing.assert_array_equal(second["posterior"][name].values, first["posterior"][name].values)


def test_off_runs_without_a_cache(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _, record = fit_tiny(tmp_path / "run", "--compile-cache", "off")
    assert record["compile_cache"] is None and not (tmp_path / "xdg").exists()


def test_the_default_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache() == tmp_path / "xdg" / "hblogit" / "jax"
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    use_compile_cache(None)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "hblogit" / "jax")
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "env"))
    use_compile_cache(None)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
    monkeypatch.setenv(COMPILE_CACHE_ENV, "off")
    use_compile_cache(None)
    assert jax.config.jax_compilation_cache_dir is None


def test_jaxs_own_cache_setting_is_kept(tmp_path):
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    use_compile_cache(None)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    use_compile_cache(str(tmp_path / "asked"))  # but an explicit folder wins
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "asked")


def test_a_default_folder_that_cannot_be_made_warns_and_runs_without(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)
    use_compile_cache(None)
    assert jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr().err.startswith("warning: no compile cache: cannot use")


def test_a_folder_that_cannot_be_made_is_a_one_line_error_naming_where_it_was_asked(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["--preset", "small", "--compile-cache", str(tmp_path / "a_file" / "cache"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --compile-cache: cannot use") and "\n" not in error
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "a_file" / "cache"))
    assert main(["--preset", "small", "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {COMPILE_CACHE_ENV}: cannot use")
