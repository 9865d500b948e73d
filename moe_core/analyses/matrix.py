"""Expert × expert count matrices as long tables, shared by layer flow and co-activation."""

from __future__ import annotations

import numpy as np
import pandas as pd


def matrix_frame(counts: np.ndarray, row_totals: np.ndarray, keep_diagonal: bool = True) -> pd.DataFrame:
    """Long table of an [E, E] count matrix. Columns: source, target, count, share (count / the row's total;
    0 where the total is 0), row_total (so a chart can say how many tokens a share is of, and grey out thin
    rows). Without the diagonal, cells (e, e) are left out, so a chart leaves them blank."""
    num_experts = counts.shape[0]
    totals = np.asarray(row_totals, dtype=np.float64).reshape(num_experts, 1)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    frame = pd.DataFrame(
        {
            "source": np.repeat(np.arange(num_experts), num_experts),
            "target": np.tile(np.arange(num_experts), num_experts),
            "count": counts.reshape(-1),
            "share": share.reshape(-1),
            "row_total": np.repeat(np.asarray(row_totals, dtype=np.int64).reshape(-1), num_experts),
        }
    )
    return frame if keep_diagonal else frame[frame["source"] != frame["target"]].reset_index(drop=True)


OTHER = -1  # the pooled row or column of the experts a grouped matrix does not show by name


def busiest(totals: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` experts with the largest totals, largest first (ties: the lower expert first)."""
    return np.argsort(-np.asarray(totals), kind="stable")[:keep]


def _pool(matrix: np.ndarray, kept: np.ndarray, axis: int, pool: bool) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows (axis 0) or columns (axis 1) in order, then (with `pool`) one OTHER summing the rest."""
    others = np.setdiff1d(np.arange(matrix.shape[axis]), kept)
    parts = [np.take(matrix, kept, axis=axis)]
    ids = [kept]
    if pool and len(others):
        parts.append(np.take(matrix, others, axis=axis).sum(axis=axis, keepdims=True))
        ids.append(np.array([OTHER]))
    return np.concatenate(parts, axis=axis), np.concatenate(ids)


def grouped_matrix_frame(
    counts: np.ndarray, row_totals: np.ndarray, keep: int, keep_diagonal: bool = True, pool: bool = True
) -> pd.DataFrame:
    """matrix_frame of the `keep` busiest rows (by row total) and columns (by column sum), the rest pooled into
    one OTHER row and column, so a 256-expert matrix draws as a readable (keep + 1)² heatmap.

    Counts stay honest: an OTHER cell is the sum of the cells it pools, and the OTHER row's total the sum of
    the pooled rows' totals. That suits a matrix where each token sits in one cell of its row (layer flow).
    Where a token counts in several columns (co-activation), a pooled column would count pairs, not tokens:
    pool=False leaves the rest out instead, with the same experts as columns as rows. Without the diagonal,
    cells (e, e) are left out before pooling (so OTHER × OTHER holds only pairs of different experts). Rows and
    columns come busiest first, OTHER last; with `keep` ≥ E this is matrix_frame, in expert order.
    """
    num_experts = counts.shape[0]
    if keep >= num_experts:
        return matrix_frame(counts, row_totals, keep_diagonal)
    matrix = np.array(counts, dtype=np.int64)
    if not keep_diagonal:
        np.fill_diagonal(matrix, 0)
    rows = busiest(row_totals, keep)
    columns = busiest(matrix.sum(axis=0), keep) if pool else rows  # unpooled: the same experts both ways
    by_row, row_ids = _pool(matrix, rows, 0, pool)
    grouped, column_ids = _pool(by_row, columns, 1, pool)
    totals, _ = _pool(np.asarray(row_totals, dtype=np.int64).reshape(-1, 1), rows, 0, pool)
    share = np.divide(grouped, totals, out=np.zeros(grouped.shape), where=totals > 0)
    frame = pd.DataFrame(
        {
            "source": np.repeat(row_ids, len(column_ids)),
            "target": np.tile(column_ids, len(row_ids)),
            "count": grouped.reshape(-1),
            "share": share.reshape(-1),
            "row_total": np.repeat(totals.reshape(-1), len(column_ids)),
        }
    )
    diagonal = (frame["source"] == frame["target"]) & (frame["source"] != OTHER)
    return frame if keep_diagonal else frame[~diagonal].reset_index(drop=True)
