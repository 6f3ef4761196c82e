"""The blocked layout: each group's rows as one column of a dense, zero-padded block.

On a CPU, XLA's gathers, scatters and segment sums over a million rows run one row at a
time, while elementwise loops are vectorised and split over the cores. This layout turns
the whole likelihood into elementwise loops. A group's rows are cut into pieces of at most
``max_width`` rows; pieces of similar size share a block of shape ``(K, width, pieces)``,
rows padded with zeros up to the block's width and pieces innermost, so that

    eta[m, p] = sum_k X[k, m, p] * slopes[k, p]        (K elementwise terms)
    T[k, p]   = sum_m r[m, p] * X[k, m, p]              (width elementwise terms)

are sums of whole contiguous arrays. The per-group parameters reach the pieces through a
gather of G rows, not N, and the per-piece sums reach the groups the same way.

The block widths minimise the padded rows for at most ``max_blocks`` blocks; both limits
bound the program size, hence the compile time (the sums are unrolled).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .data import Dataset


class Block(eqx.Module):
    """Pieces padded to one width: ``X`` is (K, width, pieces), ``sign`` (width, pieces)."""

    owner: jax.Array  # (pieces,) int32, the group of each piece
    X: jax.Array
    sign: jax.Array  # 1 - 2 y on real rows, 0 on padding (which then adds nothing)


class BlockedDataset(eqx.Module):
    """A Dataset's rows in blocks (see the module docstring); a pytree, sizes static.

    Pieces are numbered by concatenating the blocks in order. ``first_piece[g]`` is the
    number of group g's first piece, or the number of pieces for an empty group (a zero
    row appended to the sums). ``extra_piece``/``extra_owner`` list the further pieces of
    groups longer than ``max_width`` rows, usually none.
    """

    blocks: tuple[Block, ...]
    first_piece: jax.Array
    extra_piece: jax.Array
    extra_owner: jax.Array
    num_groups: int = eqx.field(static=True)
    fused: bool = eqx.field(static=True, default=False)  # sums by hblogit.fused's GPU kernel


def block_widths(piece_sizes: np.ndarray, max_blocks: int) -> np.ndarray:
    """The widths (ascending) that minimise total padded rows with at most ``max_blocks`` blocks.

    Dynamic programming over the distinct sizes: a block covering sizes i..j-1 (ascending)
    costs widths[j-1] times its piece count.
    """
    sizes, counts = np.unique(piece_sizes, return_counts=True)
    num = len(sizes)
    cum = np.concatenate([[0], np.cumsum(counts)])
    start_after_end = np.triu(np.ones((num, num), bool), 1)  # start i > end j - 1: invalid
    best = np.concatenate([[0.0], np.full(num, np.inf)])  # best[j]: first j sizes covered
    starts = []
    for _ in range(min(max_blocks, num)):
        cost = best[None, :num] + sizes[:, None] * (cum[1:, None] - cum[None, :num])
        cost[start_after_end] = np.inf
        starts.append(np.argmin(cost, axis=1))
        best = np.concatenate([[np.inf], cost[np.arange(num), starts[-1]]])
    widths, end = [], num
    for start in reversed(starts):
        widths.append(sizes[end - 1])
        end = start[end - 1]
    return np.array(sorted(widths))


def block_dataset(dataset: Dataset, *, max_blocks: int = 6, max_width: int = 32, fused: bool = False) -> BlockedDataset:
    """Lay ``dataset`` out in blocks, on the host; values are copied exactly. ``fused``:
    the likelihood's block sums run as ``hblogit.fused``'s one-pass kernel."""
    X = np.asarray(dataset.X)
    sign = 1 - 2 * np.asarray(dataset.y)
    group = np.asarray(dataset.group_idx)
    offsets = np.asarray(dataset.group_offsets)
    rank = np.arange(len(group)) - offsets[group]  # position of each row in its group
    slot = rank % max_width
    piece = np.cumsum(slot == 0) - 1  # rows are sorted by group, so pieces start at slot 0
    piece_size = np.bincount(piece)
    piece_owner = group[slot == 0]
    widths = block_widths(piece_size, max_blocks)
    piece_block = np.searchsorted(widths, piece_size)
    order = np.argsort(piece_block, kind="stable")  # concatenation order of the pieces
    number = np.empty_like(order)
    number[order] = np.arange(len(order))
    block_start = np.searchsorted(piece_block[order], np.arange(len(widths)))
    column = number - block_start[piece_block]
    blocks = []
    for b, width in enumerate(widths):
        pieces = order[piece_block[order] == b]
        rows = np.nonzero(piece_block[piece] == b)[0]
        Xb = np.zeros((X.shape[1], width, len(pieces)), X.dtype)
        Xb[:, slot[rows], column[piece[rows]]] = X[rows].T
        sb = np.zeros((width, len(pieces)), X.dtype)
        sb[slot[rows], column[piece[rows]]] = sign[rows]
        blocks.append(Block(jnp.asarray(piece_owner[pieces].astype(np.int32)), jnp.asarray(Xb), jnp.asarray(sb)))
    is_first = np.concatenate([[True], piece_owner[1:] != piece_owner[:-1]])
    first_piece = np.full(dataset.num_groups, len(piece_size))
    first_piece[piece_owner[is_first]] = number[is_first]
    return BlockedDataset(
        blocks=tuple(blocks),
        first_piece=jnp.asarray(first_piece.astype(np.int32)),
        extra_piece=jnp.asarray(number[~is_first].astype(np.int32)),
        extra_owner=jnp.asarray(piece_owner[~is_first].astype(np.int32)),
        num_groups=dataset.num_groups,
        fused=fused,
    )
