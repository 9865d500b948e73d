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
