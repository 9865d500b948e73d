"""Every family's real trace passes the trace reader's checks (so the checks refuse only broken files)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moe_core.capture.record import trace
from moe_core.proof.tiny_models import all_families, build_tiny_model
from moe_core.traces.io import load_trace_bytes, to_json_text, to_parquet_bytes

pytestmark = pytest.mark.slow
TEXTS = ["Routers differ: 12 + 30 = 42 · naïve café 東京", "def f(x):\n    return x"]


@pytest.mark.parametrize("family", all_families())
def test_traced_family_reads_back_through_every_check(family: str, demo_tokenizer: Any) -> None:
    """A two-text trace of the family's tiny model loads from JSON and Parquet with the same routing."""
    routing = trace(build_tiny_model(family), demo_tokenizer, TEXTS)
    for payload, name in ((to_json_text(routing).encode(), "t.json"), (to_parquet_bytes(routing), "t.parquet")):
        back = load_trace_bytes(payload, name)
        np.testing.assert_array_equal(back.experts, routing.experts)
        np.testing.assert_array_equal(back.tokens.position, routing.tokens.position)
        assert back.model == routing.model
