"""Generic capture on hand-built models of a family no adapter describes: experts read from the experts' calls."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from moe_core.capture.generic import RECOMPUTED_NOTE, WEIGHTS_RECOMPUTED_NOTE
from moe_core.capture.record import trace
from moe_core.capture.routers import find_moe_blocks, is_generic
from moe_core.proof.verification import verify_model

HIDDEN, EXPERTS, TOP_K, VOCAB = 32, 8, 2, 4096
TEXTS = ("The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1")


class Gate(nn.Module):
    """Scores the experts; returns (logits, index, weights) or the logits alone."""

    def __init__(self, returns_choice: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(HIDDEN, EXPERTS, bias=False)
        nn.init.normal_(self.proj.weight, std=2.0 / HIDDEN**0.5)
        self.returns_choice = returns_choice

    def forward(self, hidden: torch.Tensor) -> Any:
        logits = self.proj(hidden)
        if not self.returns_choice:
            return logits
        weights, index = logits.softmax(-1).topk(TOP_K, dim=-1)
        return logits, index, weights / weights.sum(-1, keepdim=True)


class Block(nn.Module):
    """Top-2 MoE over a ModuleList of FFNs, dispatched row by row (call) or computed inline (inline)."""

    def __init__(self, returns_choice: bool, inline: bool, dense: bool = False) -> None:
        super().__init__()
        self.dense = dense  # dense: every expert runs on every row, the unchosen ones weighted 0
        self.gate = Gate(returns_choice)
        ffn = lambda: nn.Sequential(nn.Linear(HIDDEN, 16), nn.SiLU(), nn.Linear(16, HIDDEN))  # noqa: E731
        self.experts = nn.ModuleList(ffn() for _ in range(EXPERTS))
        self.inline = inline

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, HIDDEN)
        routed = self.gate(rows)
        if isinstance(routed, tuple):
            *_, index, weights = routed
        else:
            weights, index = routed.softmax(-1).topk(TOP_K, dim=-1)
            weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(rows)
        if self.dense:
            dense = torch.zeros(len(rows), EXPERTS).scatter(1, index, weights)
            return sum(module(rows) * dense[:, e, None] for e, module in enumerate(self.experts)).reshape(hidden.shape)
        for expert, module in enumerate(self.experts):
            token, slot = (index == expert).nonzero(as_tuple=True)
            if not len(token):
                continue
            # inline: the block applies the expert's layers itself, so the expert module is never called
            run = (lambda x, m=module: m[2](m[1](m[0](x)))) if self.inline else module
            out.index_add_(0, token, run(rows[token]) * weights[token, slot, None])
        return out.reshape(hidden.shape)


class Layer(nn.Module):
    def __init__(self, returns_choice: bool, inline: bool, dense: bool) -> None:
        super().__init__()
        self.mlp = Block(returns_choice, inline, dense)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.mlp(hidden)


class HandMade(nn.Module):
    """A causal-LM-shaped model of a family transformers has never heard of."""

    def __init__(self, returns_choice: bool = True, inline: bool = False, dense: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(
            model_type="handmade", name_or_path="handmade", num_hidden_layers=2, num_experts_per_tok=TOP_K
        )
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Layer(returns_choice, inline, dense) for _ in range(2))

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, **_: Any) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


def test_a_hand_built_model_is_generic_and_its_blocks_are_found_by_structure() -> None:
    """No adapter row, no declaration: the router beside a ModuleList of 8 identical FFNs marks each layer."""
    model = HandMade()
    assert is_generic(model)
    blocks, _ = find_moe_blocks(model, "handmade")
    assert [b.name for b in blocks] == ["layers.0.mlp", "layers.1.mlp"]
    assert all(b.num_experts == EXPERTS and b.router is b.block.gate for b in blocks)


def test_generic_capture_equals_ablation_and_says_how_it_was_read(demo_tokenizer: Any) -> None:
    """Experts read from which expert modules ran on which rows, weights from the router's pair: verify passes."""
    model = HandMade()
    routing = trace(model, demo_tokenizer, TEXTS)
    assert routing.model.scoring == "softmax"
    assert not any(note.startswith("recomputed") for note in routing.model.notes)
    result = verify_model(model, demo_tokenizer, TEXTS)
    assert result.passed, result.detail


def test_weights_the_model_applies_out_of_sight_are_flagged(demo_tokenizer: Any) -> None:
    """A router that returns only logits: the experts that ran are still read, their weights are flagged."""
    routing = trace(HandMade(returns_choice=False), demo_tokenizer, TEXTS)
    assert WEIGHTS_RECOMPUTED_NOTE in routing.model.notes
    assert RECOMPUTED_NOTE not in routing.model.notes
    assert verify_model(HandMade(returns_choice=False), demo_tokenizer, TEXTS).passed


def test_unreadable_experts_fall_back_to_top_k_with_the_recomputed_notice(demo_tokenizer: Any) -> None:
    """Experts computed inline (no expert module is called): top-k of the scores, and the trace says so."""
    routing = trace(HandMade(returns_choice=False, inline=True), demo_tokenizer, TEXTS)
    assert RECOMPUTED_NOTE in routing.model.notes
    naive = np.argsort(-routing.probs, axis=-1)[..., :TOP_K]
    np.testing.assert_array_equal(np.sort(routing.experts, -1), np.sort(naive, -1))


@pytest.mark.parametrize("returns_choice", [True, False])
def test_generic_capture_matches_the_routers_own_choice(returns_choice: bool, demo_tokenizer: Any) -> None:
    """Captured experts are exactly the top-2 the block computes (softmax top-k here), for every token."""
    routing = trace(HandMade(returns_choice), demo_tokenizer, TEXTS)
    naive = np.argsort(-routing.probs, axis=-1)[..., :TOP_K]
    np.testing.assert_array_equal(np.sort(routing.experts, -1), np.sort(naive, -1))


def test_identical_rows_are_matched_in_order(demo_tokenizer: Any) -> None:
    """The same text twice gives bit-identical rows; each is matched once, so both copies read the same experts."""
    model = HandMade()
    routing = trace(model, demo_tokenizer, (TEXTS[0], TEXTS[0]))
    first, second = (routing.tokens.sequence == s for s in (0, 1))
    np.testing.assert_array_equal(routing.experts[:, first], routing.experts[:, second])
    assert verify_model(model, demo_tokenizer, (TEXTS[0], TEXTS[0])).passed


def test_row_hashes_see_bits_not_values() -> None:
    """Equal rows hash equally in any batch; a one-ulp change or another width hashes differently."""
    from moe_core.capture.generic import row_hashes

    rows = torch.randn(5, HIDDEN)
    assert torch.equal(row_hashes(rows)[2:4], row_hashes(rows[2:4].clone()))
    nudged = rows.clone()
    nudged[0, 0] = torch.nextafter(nudged[0, 0], torch.tensor(float("inf")))
    assert row_hashes(nudged)[0] != row_hashes(rows)[0]
    assert row_hashes(rows[:, :-1])[0] != row_hashes(rows)[0]


def test_experts_that_all_run_are_not_a_captured_choice(demo_tokenizer: Any) -> None:
    """Every expert runs on every row and the choice lives in weights capture cannot see: flagged as recomputed,
    and the proof still checks the top-k by ablation (unchosen experts weigh 0: zeroing them changes nothing)."""
    model = HandMade(dense=True)
    routing = trace(model, demo_tokenizer, TEXTS)
    assert RECOMPUTED_NOTE in routing.model.notes
    assert verify_model(model, demo_tokenizer, TEXTS).passed


class ChoiceOnlyGate(Gate):
    """Like DeepSeekMoE's MoEGate: returns only (index, weights), never the scores it computed."""

    def forward(self, hidden: torch.Tensor) -> Any:
        _, index, weights = super().forward(hidden)
        return index, weights


def test_scores_a_router_does_not_return_are_recomputed_from_its_weight(demo_tokenizer: Any) -> None:
    """A router returning only its top-k: the scores are its one [E, H] matrix applied to its input (flagged), the
    experts and weights are still the consumed ones, and the proof passes."""
    from moe_core.capture.generic import SCORES_RECOMPUTED_NOTE

    model = HandMade()
    reference = trace(model, demo_tokenizer, TEXTS)
    for layer in model.layers:
        layer.mlp.gate.__class__ = ChoiceOnlyGate
    routing = trace(model, demo_tokenizer, TEXTS)
    assert SCORES_RECOMPUTED_NOTE in routing.model.notes and SCORES_RECOMPUTED_NOTE not in reference.model.notes
    np.testing.assert_allclose(routing.logits, reference.logits, atol=1e-6)
    np.testing.assert_array_equal(routing.experts, reference.experts)
    assert verify_model(model, demo_tokenizer, TEXTS).passed
