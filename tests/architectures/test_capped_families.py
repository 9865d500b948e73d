"""The capacity-bound forward on every family it applies to, and a one-sentence refusal on the others."""

from __future__ import annotations

from typing import Any

import pytest

from moe_core.capped import CAPPABLE_CHOICES
from moe_core.routers import adapter_for
from moe_core.tiny_models import all_families, build_tiny_model
from moe_core.verification import verify_capped


@pytest.mark.slow
@pytest.mark.parametrize("family", all_families())
def test_capacity_bound_forward_is_exact_or_refused(family: str, demo_tokenizer: Any) -> None:
    """Cappable families pass both directions (nothing dropped = plain logits; CF 0.25 drops and moves them);
    the others answer n/a with their reason."""
    verdict = verify_capped(family, demo_tokenizer)
    model_type = build_tiny_model(family).config.model_type
    if adapter_for(model_type).choice in CAPPABLE_CHOICES:
        assert verdict == "pass"
    else:
        assert verdict.startswith("n/a: ") and len(verdict) > 20
