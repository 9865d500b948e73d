"""The balance table, the neighbours table and the Closer Look weights table, through AppTest, against the
library's frames computed here on the same trace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.loading import presets
from app.views.gate_weights import SIMILARITY_LABELS
from moe_core.capture.record import trace
from moe_core.models import load_model
from tests.app.conftest import run_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def routing():
    """The default page's trace, computed independently of the app."""
    loaded = load_model()
    return trace(loaded.model, loaded.tokenizer, next(iter(presets().values())))


def _clean(at) -> None:
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]


def test_load_view_balance_table_labels_each_definition(routing) -> None:
    """One column per definition, values from balance_frame; the pooled transformers loss in the caption."""
    from app.views.expert_load import BALANCE_COLUMNS
    from moe_core.analyses.load import balance_frame, pooled_transformers_aux_loss

    at = run_app({"view": "load"})
    _clean(at)
    shown = at.dataframe[0].value
    expected = balance_frame(routing)
    for name in BALANCE_COLUMNS:
        np.testing.assert_allclose(shown[name].to_numpy(), expected[name].to_numpy(), rtol=1e-5)
    labels = [label for label, _ in BALANCE_COLUMNS.values()]
    assert "Switch aux (top-1 f)" in labels and "transformers aux (top-k f)" in labels
    assert all(label in at.dataframe[0].proto.columns for label in labels)
    pooled = f"{pooled_transformers_aux_loss(routing):.3f}"
    assert any(pooled in caption.value and "pooled" in caption.value for caption in at.caption)


def test_gate_view_weights_table_is_per_matrix_with_a_random_baseline() -> None:
    """The Closer Look weights table at the chosen layer equals matrix_similarity_frame of the demo model's experts
    computed here: gate, up and down projections, each beside seeded random matrices of its shape."""
    from moe_core.analyses.experts import matrix_similarity_frame
    from moe_core.experts import matrix_similarities, moe_block

    block = moe_block(load_model().model, 1)
    expected = matrix_similarity_frame(matrix_similarities(block.experts, 8))
    at = run_app({"view": "gates", "layer": "1"})
    _clean(at)
    shown = at.table[1].value.reset_index(drop=True)  # three rows: an HTML table, columns by their labels
    assert shown["matrix"].tolist() == ["gate_proj", "up_proj", "down_proj"]
    pd.testing.assert_frame_equal(shown, expected.rename(columns=SIMILARITY_LABELS), check_dtype=False)
