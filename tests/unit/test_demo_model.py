"""The bundled demo model meets its quality bar on the held-out excerpts it ships with (never trained on)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moe_core.capture.record import trace
from moe_core.metrics import expert_counts, max_over_mean, vocabulary_specialization
from moe_core.models import BUNDLED_MODELS, DEMO_MODEL, load_model
from moe_core.train.card import MAX_OVER_MEAN_BAR, permuted
from moe_core.train.corpus import DOMAINS

pytestmark = pytest.mark.slow
FOLDER = BUNDLED_MODELS[DEMO_MODEL]


@pytest.fixture(scope="module")
def held_out_routing():
    loaded = load_model()
    texts = [(FOLDER / "held_out" / f"{domain}.txt").read_text(encoding="utf-8") for domain in DOMAINS]
    return loaded, trace(loaded.model, loaded.tokenizer, texts)


def test_shape_is_mixtral_8_experts_top2(held_out_routing) -> None:
    """MixtralForCausalLM with 8 experts, top-2, loadable by AutoModel/AutoTokenizer from its folder."""
    loaded, routing = held_out_routing
    assert type(loaded.model).__name__ == "MixtralForCausalLM"
    assert (routing.model.num_experts, routing.model.top_k) == (8, 2)


def test_held_out_loss_beats_unigram(held_out_routing) -> None:
    """On every held-out excerpt the model's loss is below the excerpt's own unigram entropy, by > 1 nat on average.

    The excerpt's own token frequencies are the best unigram model there is for it (and biased low on ~1k
    tokens), a stricter baseline than the card's unigram fitted on the training split.
    """
    loaded, _ = held_out_routing
    gaps = []
    for domain in DOMAINS:
        text = (FOLDER / "held_out" / f"{domain}.txt").read_text(encoding="utf-8")
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"][:1024]])
        with torch.inference_mode():
            logits = loaded.model(ids).logits
        loss = F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
        counts = np.bincount(ids[0].numpy(), minlength=4096)
        unigram = float(-np.log(counts[ids[0].numpy()] / counts.sum()).mean())
        assert loss < unigram, (domain, loss, unigram)
        gaps.append(unigram - loss)
    assert np.mean(gaps) > 1.0, gaps


def test_load_is_balanced_on_every_layer(held_out_routing) -> None:
    """Max/mean tokens per expert (all top-2 slots) is within the bar on every layer."""
    _, routing = held_out_routing
    for layer in range(len(routing.model.moe_layers)):
        assert max_over_mean(expert_counts(routing.experts[layer], 8)) <= MAX_OVER_MEAN_BAR


def test_routing_is_token_specialised(held_out_routing) -> None:
    """OLMoE vocabulary specialization is far above chance (top-1 labels shuffled across tokens) on every layer."""
    _, routing = held_out_routing
    for layer in range(len(routing.model.moe_layers)):
        top1 = routing.experts[layer, :, 0]
        real = vocabulary_specialization(routing.tokens.ids, top1)
        assert real > vocabulary_specialization(routing.tokens.ids, permuted(top1)) + 0.2


def test_card_states_what_was_measured() -> None:
    """The model card's figures exist and say the quality bar is met."""
    card = json.loads((FOLDER / "card.json").read_text(encoding="utf-8"))
    assert set(card["domains"]) == set(DOMAINS)
    assert "NOT met" not in (FOLDER / "README.md").read_text(encoding="utf-8")


def test_the_shipped_series_ends_at_the_shipped_model() -> None:
    """The training series ships beside the weights: recorded every card snapshot_every steps from 0 to the
    last step, and its last snapshot is the shipped model's own routing of the same texts, traced here afresh
    (experts exactly; weights to float16's precision, as stored)."""
    from moe_core.series.runner import SERIES_TOKENS, default_texts
    from moe_core.series.store import load_series, series_folder

    card = json.loads((BUNDLED_MODELS[DEMO_MODEL] / "card.json").read_text())["training"]
    series = load_series(series_folder(DEMO_MODEL))
    assert series.steps == tuple(range(0, card["steps"] + 1, card["snapshot_every"]))
    loaded = load_model()
    fresh = trace(loaded.model, loaded.tokenizer, default_texts(), max_tokens=SERIES_TOKENS)
    np.testing.assert_array_equal(series.traces[-1].experts, fresh.experts)
    np.testing.assert_allclose(series.traces[-1].weights, fresh.weights, atol=5e-4)
    assert series.traces[-1].tokens.text == fresh.tokens.text


def test_training_series_reads_the_bundled_model_offline(capsys: pytest.CaptureFixture[str]) -> None:
    """`training-series demo-mixtral` from the shipped files alone: every curve ends at 1 (the final step against
    itself) and starts below it (the random initialisation routes otherwise)."""
    from tests.cli_runner import run_cli

    code, printed, err = run_cli(capsys, "training-series", DEMO_MODEL)
    assert code == 0, err
    data = json.loads(printed)
    assert data["steps"][0] == 0 and len(data["layers"]) == 4
    for layer in data["layers"]:
        assert layer["top1_match_final"][-1] == layer["set_match_final"][-1] == 1.0
        assert layer["top1_match_final"][0] < 0.5
    assert data["token_id_match_final"][-1] == 1.0
