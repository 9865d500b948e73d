"""One proof per family per test session: verify_family (the ablation proof of every MoE layer, and the
capacity-bound forward's check) is run once for each family and read by every test that needs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from moe_core.proof.verification import FamilyResult, verify_family


@pytest.fixture(scope="session")
def family_result(demo_tokenizer: Any) -> Callable[[str], FamilyResult]:
    """family -> its FamilyResult, computed on first use (a family's proof takes seconds; 54 families)."""
    done: dict[str, FamilyResult] = {}

    def result(family: str) -> FamilyResult:
        if family not in done:
            done[family] = verify_family(family, demo_tokenizer)
        return done[family]

    return result
