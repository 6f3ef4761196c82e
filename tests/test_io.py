"""load_table on every format, and the shared command-line data options."""

import argparse

import numpy as np
import pandas as pd
import pytest

import hblogit
from hblogit.cli import add_data_arguments, cli_errors, load_data
from hblogit.presets import PRESETS


def frame(labels):
    """Six rows, two numeric covariates, one text column that default covariates must skip."""
    return pd.DataFrame(
        {
            "x1": [0.5, -1.0, 2.0, 0.0, 1.5, -0.5],
            "shop": labels,
            "bought": [1, 0, 1, 1, 0, 0],
            "note": ["a", "b", "c", "d", "e", "f"],
            "x2": [1, 2, 3, 4, 5, 6],
        }
    )


STRING_LABELS = ["zeta", "alpha", "zeta", "mid", "alpha", "zeta"]
SPARSE_LABELS = [9_000_000_001, 17, 9_000_000_001, 123_456_789_012, 17, 9_000_000_001]


def write(table, tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".parquet":
        table.to_parquet(path)
    else:
        np.savez(path, **{c: np.asarray(table[c].tolist()) for c in table.columns})  # text as <U, not object
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
@pytest.mark.parametrize("labels", [STRING_LABELS, SPARSE_LABELS], ids=["strings", "sparse-ints"])
def test_load_table_keeps_labels_and_names(tmp_path, suffix, labels):
    table = frame(labels)
    ds = hblogit.load_table(write(table, tmp_path, suffix), "bought", "shop")
    assert ds.covariate_names == ("x1", "x2")
    assert list(ds.group_labels) == sorted(set(labels))
    assert ds.num_groups == 3 and ds.num_obs == 6
    # Row by row, each observation keeps its covariates, outcome and label.
    order = np.asarray(ds.order)
    np.testing.assert_allclose(np.asarray(ds.X), table[["x1", "x2"]].to_numpy()[order])
    np.testing.assert_array_equal(np.asarray(ds.y), table["bought"].to_numpy()[order])
    np.testing.assert_array_equal(
        [ds.group_labels[g] for g in np.asarray(ds.group_idx)], np.asarray(labels, dtype=object)[order]
    )


def test_a_dataframe_loads_as_its_file_does(tmp_path):
    """In memory, with an index that is not 0..n-1 and categorical groups with an unused
    category: the Dataset of its CSV; errors say "the DataFrame"."""
    table = frame(STRING_LABELS).set_index(np.arange(6) * 7 + 3)
    from_file = hblogit.load_table(write(table, tmp_path, ".csv"), "bought", "shop")
    table["shop"] = pd.Categorical(table["shop"], categories=["unused", *sorted(set(STRING_LABELS))])
    in_memory = hblogit.load_table(table, "bought", "shop")
    assert in_memory.group_labels == from_file.group_labels and in_memory.covariate_names == from_file.covariate_names
    for name in ("X", "y", "group_idx"):
        np.testing.assert_array_equal(getattr(in_memory, name), getattr(from_file, name))
    with pytest.raises(ValueError, match="column 'x1' in the DataFrame has 1 missing value"):
        hblogit.load_table(table.assign(x1=[0.5, np.nan, 2, 0, 1, 1]), "bought", "shop")


def test_explicit_covariates_keep_their_order(tmp_path):
    path = write(frame(STRING_LABELS), tmp_path, ".csv")
    ds = hblogit.load_table(path, "bought", "shop", covariates=["x2", "x1"])
    assert ds.covariate_names == ("x2", "x1")
    np.testing.assert_allclose(sorted(np.asarray(ds.X)[:, 0]), [1, 2, 3, 4, 5, 6])


def test_boolean_outcome(tmp_path):
    table = frame(STRING_LABELS).assign(bought=[True, False, True, True, False, False])
    ds = hblogit.load_table(write(table, tmp_path, ".parquet"), "bought", "shop")
    assert sorted(np.asarray(ds.y).tolist()) == [0, 0, 0, 1, 1, 1]


def test_npz_with_2d_X_and_names(tmp_path):
    path = tmp_path / "data.npz"
    X = np.arange(12.0).reshape(6, 2)
    np.savez(path, X=X, covariate_names=np.array(["age", "dose"]), y=[1, 0, 1, 0, 1, 0], g=np.array(STRING_LABELS))
    ds = hblogit.load_table(path, "y", "g")
    assert ds.covariate_names == ("age", "dose")
    np.testing.assert_allclose(np.sort(np.asarray(ds.X)[:, 1]), X[:, 1])
    ds = hblogit.load_table(path, "y", "g", covariates=["dose"])
    assert ds.covariate_names == ("dose",)
    assert hblogit.load_table(path, "y", "g", covariates="dose").covariate_names == ("dose",)  # a name, not its letters


def bad_inputs(tmp_path):
    """(description, path, load_table keyword arguments, words the message must contain)."""
    good = write(frame(STRING_LABELS), tmp_path, ".csv")
    tsv = tmp_path / "data.tsv"
    tsv.write_text("a\tb\n")

    def csv(name, **changes):
        return write(frame(STRING_LABELS).assign(**changes), tmp_path / name, ".csv")

    for sub in ("nan_x", "nan_y", "nan_g", "y2", "ystr", "text_only"):
        (tmp_path / sub).mkdir()
    empty_npz, truncated_npz, npy_as_npz, clashing_npz = (tmp_path / f"{name}.npz" for name in ("empty", "truncated", "npy", "clash"))
    empty_npz.write_bytes(b"")
    np.savez(truncated_npz, bought=[1, 0], shop=[0, 1])
    truncated_npz.write_bytes(truncated_npz.read_bytes()[:100])
    with open(npy_as_npz, "wb") as handle:
        np.save(handle, np.ones(3))
    np.savez(clashing_npz, X=np.ones((2, 2)), covariate_names=np.array(["bought", "dose"]), bought=[1, 0], shop=[0, 1])
    text_only = write(frame(STRING_LABELS).drop(columns=["x1", "x2"]), tmp_path / "text_only", ".csv")
    return [
        ("empty npz", empty_npz, {}, ["cannot read", "empty.npz"]),
        ("truncated npz", truncated_npz, {}, ["cannot read", "truncated.npz"]),
        ("npy named npz", npy_as_npz, {}, ["cannot read", "npy.npz", "single array"]),
        ("covariate name clash in npz", clashing_npz, {}, ["'bought'", "clash.npz"]),
        ("covariate asked twice", good, dict(covariates=["x1", "x1"]), ["'x1'", "more than once"]),
        ("missing file", tmp_path / "nope.csv", {}, ["no such file", "nope.csv"]),
        ("extension", tsv, {}, ["unsupported", ".tsv"]),
        ("missing outcome", good, dict(outcome="y"), ["'y'", "bought", "x1"]),
        ("missing group", good, dict(group="store"), ["'store'", "shop"]),
        ("missing covariate", good, dict(covariates=["x1", "x9"]), ["'x9'", "x2"]),
        ("non-numeric covariate", good, dict(covariates=["x1", "note"]), ["'note'", "not numeric"]),
        ("no numeric covariate", text_only, {}, ["no numeric covariate", "'note'"]),
        ("NaN covariate", csv("nan_x", x1=[0.5, np.nan, 2, 0, 1, 1]), {}, ["'x1'", "NaN", "row 1"]),
        ("NaN outcome", csv("nan_y", bought=[1, 0, np.nan, 1, 0, 0]), {}, ["'bought'", "NaN", "row 2"]),
        ("NaN group", csv("nan_g", shop=["a", None, "b", "a", "b", "a"]), {}, ["'shop'", "NaN", "row 1"]),
        ("outcome 2", csv("y2", bought=[1, 0, 2, 1, 0, 0]), {}, ["'bought'", "0/1", "2"]),
        ("outcome text", csv("ystr", bought=["yes", "no"] * 3), {}, ["'bought'", "0/1"]),
    ]


def test_bad_inputs_raise_value_error_naming_the_problem(tmp_path):
    for description, path, kwargs, words in bad_inputs(tmp_path):
        kwargs = dict(dict(outcome="bought", group="shop"), **kwargs)
        with pytest.raises(ValueError) as info:
            hblogit.load_table(path, **kwargs)
        message = str(info.value)
        assert "\n" not in message, description
        for word in words:
            assert word in message, (description, message)


def test_no_covariates_gives_random_intercepts_only(tmp_path):
    """covariates=[] (--covariates ''), or a table of the outcome and group alone: K = 0."""
    path = write(frame(STRING_LABELS), tmp_path, ".csv")
    (tmp_path / "bare").mkdir()
    bare = write(frame(STRING_LABELS)[["bought", "shop"]], tmp_path / "bare", ".csv")
    for dataset in (hblogit.load_table(path, "bought", "shop", covariates=[]), hblogit.load_table(bare, "bought", "shop")):
        assert dataset.X.shape == (6, 0) and dataset.covariate_names == () and dataset.num_params == 2 + 3
    loaded = load_data(parse(["--data", str(path), "--outcome", "bought", "--group", "shop", "--covariates", ""]))
    assert loaded.dataset.num_covariates == 0 and "covariates none (random intercepts only)" in loaded.description


def parse(argv):
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args(argv)


def test_load_data_from_preset_and_default():
    small = PRESETS["small"]
    loaded = load_data(parse(["--preset", "small"]))
    assert loaded.truth is not None and loaded.dataset.num_groups == small["num_groups"]
    assert "small" in loaded.description and f"N={small['num_obs']:,}" in loaded.description
    assert load_data(parse([]), default_preset="small").dataset.num_obs == small["num_obs"]


def test_load_data_from_file(tmp_path):
    path = write(frame(SPARSE_LABELS), tmp_path, ".parquet")
    loaded = load_data(parse(["--data", str(path), "--outcome", "bought", "--group", "shop", "--covariates", "x2"]))
    assert loaded.truth is None and loaded.dataset.covariate_names == ("x2",)
    assert "data.parquet" in loaded.description


def test_data_options_that_do_not_fit_together(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["--preset", "small", "--data", "x.csv"])
    with pytest.raises(ValueError, match="--data needs --group"):
        load_data(parse(["--data", "x.csv", "--outcome", "y"]))
    with pytest.raises(ValueError, match="--outcome applies only to --data"):
        load_data(parse(["--outcome", "y"]))


def test_cli_errors_prints_one_line_and_returns_2(tmp_path, capsys):
    @cli_errors
    def main(argv=None):
        load_data(parse(argv))
        return 0

    assert main(["--data", str(tmp_path / "none.csv"), "--outcome", "y", "--group", "g"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no such file") and err.count("\n") == 1 and "Traceback" not in err
