"""Loading a table (a file, or a pandas DataFrame in memory) into a ``Dataset``: one outcome
column, one group column, covariates.

Accepted files:

- ``.csv``: read with ``pandas.read_csv``.
- ``.parquet``: read with ``pandas.read_parquet`` (pyarrow).
- ``.npz``: every 1-D array is a column named by its key. The covariates may instead (or as
  well) be one 2-D array under the key ``X``, whose columns are named by an optional 1-D
  string array ``covariate_names`` (default ``x0, x1, ...``); those columns join the others.
  Arrays are loaded with ``allow_pickle=False``, so object arrays are refused.

Every problem with the file or its columns raises ``ValueError`` with a one-line message that
names the file (or "the DataFrame") and the column, so that a command-line tool can print it
as it stands.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from .checks import repeated
from .data import Dataset

SUPPORTED = (".csv", ".parquet", ".npz")


def load_table(path, outcome: str, group: str, covariates=None) -> Dataset:
    """A ``Dataset`` from the columns ``outcome`` (0/1 or boolean), ``group`` and ``covariates``
    of ``path``: a .csv, .parquet or .npz file, or a pandas DataFrame (read as it is).

    Group labels may be anything pandas can sort (strings, sparse large integers, ...): they are
    factorised in sorted order and kept as ``dataset.group_labels``. ``covariates`` defaults to
    every numeric column other than ``outcome`` and ``group``, in file order; the names are
    kept as ``dataset.covariate_names``. ``covariates=[]``, or a table of the outcome and
    group columns alone, gives the model with random intercepts only (K = 0).
    """
    if isinstance(path, pd.DataFrame):
        table, where = path, "in the DataFrame"
    else:
        path = Path(path)
        table, where = read_table(path), f"in {path.name}"
    covariates = _covariate_columns(table, outcome, group, covariates, where)
    for column in (outcome, group, *covariates):
        _require_column(table, column, where)
        _require_no_missing(table[column], column, where)
    y = _binary_outcome(table[outcome], outcome, where)
    X = _covariate_matrix(table, covariates, where)
    group_idx, labels = pd.factorize(table[group], sort=True)
    labels = np.asarray(labels)
    return Dataset(X, y, group_idx, num_groups=len(labels), covariate_names=covariates, group_labels=labels)


def read_table(path: Path) -> pd.DataFrame:
    """The file as a DataFrame, whatever its format; ``ValueError`` for a missing or unreadable file."""
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise ValueError(f"unsupported file type {suffix or '(none)'!r} for {path}: use one of {', '.join(SUPPORTED)}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return _npz_table(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read {path}: {first_line}") from error


def _npz_table(path: Path) -> pd.DataFrame:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("it holds a single array (a .npy file), not named arrays")
    with loaded as archive:
        arrays = {key: archive[key] for key in archive.files}
    names = arrays.pop("covariate_names", None)
    X = arrays.pop("X", None)
    bad = [key for key, value in arrays.items() if value.ndim != 1]
    if bad:
        raise ValueError(f"array(s) {', '.join(bad)} in {path.name} are not 1-D: only 'X' may be 2-D")
    columns = dict(arrays)
    if X is not None:
        if X.ndim != 2:
            raise ValueError(f"'X' in {path.name} must be 2-D (rows x covariates), got {X.ndim} dimension(s)")
        names = [f"x{k}" for k in range(X.shape[1])] if names is None else [str(n) for n in names]
        if len(names) != X.shape[1]:
            raise ValueError(
                f"'covariate_names' in {path.name} has {len(names)} names but 'X' has {X.shape[1]} columns"
            )
        clash = sorted({*repeated(names), *(n for n in names if n in columns)})
        if clash:
            raise ValueError(f"covariate name(s) {', '.join(map(repr, clash))} in {path.name} are repeated or also a 1-D array's key")
        columns.update(zip(names, X.T))
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays in {path.name} have different lengths: {lengths}")
    return pd.DataFrame(columns)


def _require_column(table: pd.DataFrame, column: str, where: str) -> None:
    if column not in table.columns:
        raise ValueError(f"no column {column!r} {where}; columns are: {', '.join(map(str, table.columns))}")


def _require_no_missing(values: pd.Series, column: str, where: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"column {column!r} {where} has {missing.sum()} missing value(s) (NaN), "
            f"first at row {int(np.argmax(missing))}"
        )


def _covariate_columns(table, outcome, group, covariates, where) -> tuple[str, ...]:
    """The requested covariates, or every numeric column that is neither outcome nor group."""
    for column in (outcome, group):
        _require_column(table, column, where)
    if outcome == group:
        raise ValueError(f"outcome and group are the same column {outcome!r}")
    if covariates is None:
        others = [c for c in table.columns if c not in (outcome, group)]
        covariates = [c for c in others if pd.api.types.is_numeric_dtype(table[c])]
        if others and not covariates:  # a table of outcome and group alone has random intercepts only
            raise ValueError(
                f"no numeric covariate columns {where} besides {outcome!r} and {group!r} (not numeric: "
                f"{', '.join(map(repr, others))}); for random intercepts only, pass covariates=[] (--covariates '')"
            )
    covariates = (covariates,) if isinstance(covariates, str) else tuple(covariates)
    twice = repeated(covariates)
    if twice:
        raise ValueError(f"covariate(s) {', '.join(map(repr, twice))} requested more than once")
    clash = [c for c in covariates if c in (outcome, group)]
    if clash:
        raise ValueError(f"covariate(s) {', '.join(map(repr, clash))} also used as outcome or group")
    return covariates


def _binary_outcome(values: pd.Series, column: str, where: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(values):
        raise ValueError(f"outcome column {column!r} {where} must be 0/1 or boolean, got dtype {values.dtype}")
    array = values.to_numpy()
    not_binary = ~np.isin(array, (0, 1))
    if not_binary.any():
        first = int(np.argmax(not_binary))
        raise ValueError(
            f"outcome column {column!r} {where} must be 0/1: found {array[first].item()!r} at row {first} "
            f"({not_binary.sum()} such rows)"
        )
    return array.astype(np.int64)


def _covariate_matrix(table: pd.DataFrame, covariates, where: str) -> np.ndarray:
    """The covariates as one float32 array, the data precision of every mode but "float64"
    (which converts it), whether or not JAX's x64 mode is on when the table is read."""
    for column in covariates:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise ValueError(f"covariate column {column!r} {where} is not numeric (dtype {table[column].dtype})")
    X = table[list(covariates)].to_numpy(dtype=np.float64)
    infinite = ~np.isfinite(X)
    if infinite.any():
        rows, cols = np.nonzero(infinite)
        raise ValueError(f"covariate column {covariates[cols[0]]!r} {where} has an infinite value at row {rows[0]}")
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    overflow = ~np.isfinite(X32)
    if overflow.any():
        rows, cols = np.nonzero(overflow)
        raise ValueError(f"covariate column {covariates[cols[0]]!r} {where} exceeds float32's range at row {rows[0]}; rescale it")
    return X32
