"""Checkpoint files: a pytree of arrays and a few tables, with a JSON manifest, written atomically.

A checkpoint directory holds

    manifest.json          what the run is (config, data digest, versions), where it stands
                           (phase, step, timings) and the name of its arrays file
    arrays-<unique>.npz    the flattened leaves of a pytree (``tree/0``, ``tree/1``, ...) and
                           named tables (``<table>/<name>``)

No code is pickled: the reader rebuilds the pytree from a template of the same structure
(``jax.eval_shape`` of the code that made it) and checks every leaf's shape and dtype
against it. PRNG keys are stored as their ``jax.random.key_data``.

Writes are atomic: each file is written to a temporary name in the same directory,
flushed, fsynced and renamed over its final name (``os.replace``). The arrays file is
written first under a fresh name and the manifest, renamed last, is the commit point: a
crash at any moment leaves the previous manifest and the arrays file it names intact.
Older arrays files and leftover temporary files are removed after the manifest is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1
TEMPORARY_PREFIX = ".tmp-"


def data_digest(dataset) -> str:
    """sha256 over the dtype, shape and bytes of X, y and group_idx, and the group count."""
    digest = hashlib.sha256(f"num_groups={dataset.num_groups}".encode())
    for array in (dataset.X, dataset.y, dataset.group_idx):
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def exists(directory) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ValueError(f"no checkpoint in {directory} (no {MANIFEST})")
    return json.loads(path.read_text())


def check_same_run(manifest: dict, identity: dict, directory) -> None:
    """Raise ``ValueError`` (one line) unless the checkpoint was written by the run ``identity``
    describes: same data digest and same config (compared as JSON, so tuples equal lists)."""
    if manifest.get("format") != FORMAT:
        raise ValueError(f"cannot resume from {directory}: checkpoint format {manifest.get('format')!r}, expected {FORMAT}")
    if manifest["data_digest"] != identity["data_digest"]:
        raise ValueError(
            f"cannot resume from {directory}: it was written for other data "
            f"(sha256 {manifest['data_digest'][:12]}..., this data {identity['data_digest'][:12]}...)"
        )
    saved, wanted = manifest["config"], json.loads(json.dumps(identity["config"]))
    differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    if differ:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        now = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
        raise ValueError(f"cannot resume from {directory}: it was written with {was}; this run has {now}")


def save(directory, manifest: dict, tree, tables: dict[str, dict[str, np.ndarray]]) -> None:
    """Write ``tree``'s leaves and ``tables`` with ``manifest``, atomically (see module doc)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays_name = f"arrays-{secrets.token_hex(6)}.npz"
    arrays = {f"tree/{i}": leaf for i, leaf in enumerate(_storable_leaves(tree))}
    for table, columns in tables.items():
        arrays.update({f"{table}/{name}": np.asarray(value) for name, value in columns.items()})
    _atomic_write(directory / arrays_name, lambda f: np.savez(f, **arrays))
    document = json.dumps({**manifest, "format": FORMAT, "arrays": arrays_name}, indent=2, default=str)
    _atomic_write(directory / MANIFEST, lambda f: f.write(document.encode()))
    _remove_stale(directory, keep={MANIFEST, arrays_name})


def load(directory, manifest: dict, template) -> tuple[Any, dict[str, dict[str, np.ndarray]]]:
    """The pytree (structure of ``template``, leaves checked against it) and the tables."""
    leaves, treedef = jax.tree.flatten(template)
    with np.load(Path(directory) / manifest["arrays"]) as stored:
        loaded = [stored[f"tree/{i}"] for i in range(sum(k.startswith("tree/") for k in stored.files))]
        tables: dict[str, dict[str, np.ndarray]] = {}
        for key in stored.files:
            table, _, name = key.partition("/")
            if table != "tree":
                tables.setdefault(table, {})[name] = stored[key]
    if len(loaded) != len(leaves):
        raise ValueError(f"checkpoint in {directory} holds {len(loaded)} arrays, this run's state has {len(leaves)}")
    return jax.tree.unflatten(treedef, [_restore(leaf, array, i, directory) for i, (leaf, array) in enumerate(zip(leaves, loaded))]), tables


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _storable_leaves(tree) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf) for leaf in jax.tree.leaves(tree)]


def _restore(template, array: np.ndarray, index: int, directory):
    """One stored leaf as the template's leaf: shape and dtype checked, keys re-wrapped."""
    expected = jax.eval_shape(jax.random.key_data, template) if _is_key(template) else template
    if array.shape != tuple(expected.shape) or array.dtype != expected.dtype:
        raise ValueError(
            f"checkpoint in {directory}: array {index} is {array.dtype}{list(array.shape)}, this run expects "
            f"{np.dtype(expected.dtype)}{list(expected.shape)} (written by another version of hblogit or sampler?)"
        )
    return jax.random.wrap_key_data(array) if _is_key(template) else jax.numpy.asarray(array)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename it to ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Arrays files the manifest no longer names, and temporary files a killed write left."""
    for path in directory.iterdir():
        stale = path.name.startswith(TEMPORARY_PREFIX) or (path.name.startswith("arrays-") and path.suffix == ".npz")
        if stale and path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
