"""Evaluate the trained demo model on held-out text and write its model card (README.md + card.json).

Everything the card states is measured here: loss per domain against a unigram baseline, per-layer load
balance, OLMoE's vocabulary specialization against the same model with shuffled router weights, a
sample per domain and the time of a 512-token forward. Also ships a small held-out sample per domain
(held_out/<domain>.txt) that tests and the app's presets read.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from moe_core.capture.record import recording
from moe_core.capture.routers import adapter_for, find_moe_blocks
from moe_core.metrics import expert_counts, max_over_mean, vocabulary_specialization
from moe_core.train.corpus import DOMAINS

EVAL_ROWS = 24  # held-out windows per domain
EVAL_LEN = 512
SHIPPED_SAMPLE_CHARS = 6_000  # per domain, in assets: enough for tests and presets, small for git
SAMPLE_PROMPTS = {
    "prose": "The tutorial explains how",
    "code": "def read_config(path):\n",
    "arithmetic": "417 + 85 = ",
    "german": "Der Mensch ist",
    "markup": ".SH DESCRIPTION\n",
}
MAX_OVER_MEAN_BAR = 1.5  # the quality bar for load balance on every layer


def held_out_windows(stream: np.ndarray) -> torch.Tensor:
    """EVAL_ROWS evenly spaced windows of EVAL_LEN tokens (deterministic)."""
    starts = np.linspace(0, len(stream) - EVAL_LEN - 1, EVAL_ROWS).astype(int)
    return torch.from_numpy(np.stack([stream[s : s + EVAL_LEN].astype(np.int64) for s in starts]))


@torch.inference_mode()
def route_and_score(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, np.ndarray]:
    """(mean next-token loss, experts [L, rows*len, k]) for a batch of token windows."""
    blocks, logits_index = find_moe_blocks(model, model.config.model_type)
    with recording(blocks, logits_index, adapter_for(model.config.model_type).choice) as records:
        logits = model(input_ids=ids, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()
    return loss, np.stack([r.experts[0].numpy() for r in records])


def unigram_loss(train: np.ndarray, held_out: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy of a add-one-smoothed unigram model fitted on the domain's training tokens."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[held_out].mean())


def shuffled_router_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same model with every router's weight entries randomly permuted: the specialization null."""
    shuffled = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in find_moe_blocks(shuffled, shuffled.config.model_type)[0]:
            weight = block.router.weight
            weight.copy_(weight.reshape(-1)[torch.randperm(weight.numel(), generator=generator)].reshape(weight.shape))
    return shuffled


def permuted(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Top-1 labels shuffled across tokens: the same load, no link between token and expert (chance level)."""
    return np.random.default_rng(seed).permutation(labels)


def sample(model: torch.nn.Module, tokenizer: Any, prompt: str) -> str:
    torch.manual_seed(0)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=40, do_sample=True, temperature=0.7, top_k=40, pad_token_id=0)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def forward_seconds(model: torch.nn.Module, tokens: int = 512, repeats: int = 5) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    with torch.inference_mode():
        model(ids)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return min(times)


def evaluate(out: Path, work: Path) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    shuffled = shuffled_router_copy(model)
    data = work / "data"
    per_domain: dict[str, Any] = {}
    vocab_size = model.config.vocab_size
    all_ids, all_experts, all_shuffled = [], [], []
    for domain in DOMAINS:
        held_out = np.load(data / f"{domain}.held_out.npy")
        windows = held_out_windows(held_out)
        loss, experts = route_and_score(model, windows)
        _, shuffled_experts = route_and_score(shuffled, windows)
        per_domain[domain] = {
            "loss": round(loss, 3),
            "unigram_loss": round(unigram_loss(np.load(data / f"{domain}.train.npy"), held_out, vocab_size), 3),
            "sample": sample(model, tokenizer, SAMPLE_PROMPTS[domain]),
        }
        all_ids.append(windows.reshape(-1).numpy())
        all_experts.append(experts)
        all_shuffled.append(shuffled_experts)
    ids = np.concatenate(all_ids)
    experts = np.concatenate(all_experts, axis=1)
    shuffled_experts = np.concatenate(all_shuffled, axis=1)
    num_experts = model.config.num_local_experts
    layers = [
        {
            "layer": layer,
            "max_over_mean_topk": round(max_over_mean(expert_counts(chosen, num_experts)), 3),
            "max_over_mean_top1": round(max_over_mean(expert_counts(chosen[:, :1], num_experts)), 3),
            "vocab_specialization": round(vocabulary_specialization(ids, chosen[:, 0]), 3),
            "vocab_specialization_shuffled": round(vocabulary_specialization(ids, null[:, 0]), 3),
            "vocab_specialization_chance": round(vocabulary_specialization(ids, permuted(chosen[:, 0])), 3),
        }
        for layer, (chosen, null) in enumerate(zip(experts, shuffled_experts, strict=True))
    ]
    record = json.loads((work / "train_record.json").read_text())
    if "train_seconds" not in record:  # runs before the loop recorded it: from the files' own times
        started = os.path.getmtime(data / "done")
        record["train_seconds"] = round(os.path.getmtime(work / "train_record.json") - started)
    return {
        "training": record,
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_512_seconds": round(forward_seconds(model), 4),
        "eval_tokens_per_domain": EVAL_ROWS * EVAL_LEN,
        "domains": per_domain,
        "layers": layers,
    }


def ship_held_out_samples(out: Path, work: Path) -> None:
    folder = out / "held_out"
    folder.mkdir(exist_ok=True)
    for domain in DOMAINS:
        text = (work / "data" / f"{domain}.held_out.txt").read_text(encoding="utf-8")
        cut = text.rfind("\n", 0, SHIPPED_SAMPLE_CHARS)
        (folder / f"{domain}.txt").write_text(text[: cut if cut > 0 else SHIPPED_SAMPLE_CHARS], encoding="utf-8")


def quality_checks(card: dict[str, Any]) -> list[tuple[str, bool]]:
    """The issue's quality bar, each as (statement with the measured figure, met?)."""
    worst = max(x["max_over_mean_topk"] for x in card["layers"])
    spec_gap = min(x["vocab_specialization"] - x["vocab_specialization_shuffled"] for x in card["layers"])
    chance_gap = min(x["vocab_specialization"] - x["vocab_specialization_chance"] for x in card["layers"])
    loss_gap = min(v["unigram_loss"] - v["loss"] for v in card["domains"].values())
    return [
        (f"held-out loss below the unigram baseline in every domain (smallest gap {loss_gap:.2f} nats)", loss_gap > 1),
        (f"max/mean load at most {MAX_OVER_MEAN_BAR} on every layer (worst {worst:.2f})", worst <= MAX_OVER_MEAN_BAR),
        (
            f"vocabulary specialization above the shuffled router on every layer (smallest gap {spec_gap:.2f})",
            spec_gap > 0,
        ),
        (
            f"vocabulary specialization far above chance on every layer (smallest gap {chance_gap:.2f})",
            chance_gap > 0.2,
        ),
    ]


def _markdown(card: dict[str, Any]) -> str:
    t = card["training"]
    rows = "\n".join(f"| {d} | {v['loss']:.2f} | {v['unigram_loss']:.2f} |" for d, v in card["domains"].items())
    layer_rows = "\n".join(
        f"| {x['layer']} | {x['max_over_mean_topk']:.2f} | {x['max_over_mean_top1']:.2f} | "
        f"{x['vocab_specialization']:.2f} | {x['vocab_specialization_shuffled']:.2f} | "
        f"{x['vocab_specialization_chance']:.2f} |"
        for x in card["layers"]
    )
    samples = "\n\n".join(f"**{d}**\n\n```\n{v['sample']}\n```" for d, v in card["domains"].items())
    checks = "\n".join(f"- {text}: {'met' if ok else 'NOT met'};" for text, ok in quality_checks(card))
    size = (
        f"{card['parameters'] / 1e6:.1f} M parameters: {t['num_layers']} layers, hidden {t['hidden_size']}, "
        f"{t['num_experts']} experts of width {t['intermediate_size']}, top-{t['top_k']}"
    )
    return f"""# demo-mixtral: the bundled demo MoE of MoE Routing Explorer

A small `MixtralForCausalLM` ({size}) with a {t["vocab_size"]}-token byte-level BPE,
trained on this machine's CPU so every routing view has something real to show. A 512-token forward takes
{card["forward_512_seconds"] * 1000:.0f} ms on 2 CPU cores.

Rebuild it from scratch: `apt-get install -y python3.11-doc fortunes-de man-db`, then
`python -m moe_core.train --card` (deterministic given `--seed`; re-running resumes from the last checkpoint).

## Training
- **Data**, five domains, sampled equally in every batch (2 rows of {t["seq_len"]} tokens each per step):
  English prose (the Python 3.11 documentation sources and pydoc topics), Python code (the CPython standard
  library), arithmetic (generated, seeded), German (Debian fortunes-de quotations), markup (section-1 man pages in
  groff). 5% of documents per domain (by a stable hash of their name) are held out.
- **Steps** {t["steps"]}, **tokens** {t["tokens_seen"] / 1e6:.1f} M, **time** {t["train_seconds"] / 60:.0f} min
  on 2 CPU cores, AdamW (lr {t["learning_rate"]} cosine to {t["min_learning_rate"]}, weight decay
  {t["weight_decay"]}).
- **Load balancing**: Switch's auxiliary loss N·Σ f_i·P_i, computed for each layer and averaged over layers,
  coefficient {t["balance_coef"]}.

## Held-out loss per domain ({card["eval_tokens_per_domain"]:,} tokens each, nats/token)
| domain | model | unigram baseline |
|---|---|---|
{rows}

## Routing on held-out text (all domains pooled)
Load balance is the busiest expert's share over the mean (1.0 = even), counting every top-{t["top_k"]} slot and
counting top-1 only. Vocabulary specialization follows OLMoE (arXiv 2409.02060): for each token id seen at least
10 times, the share of its occurrences whose top-1 expert is that id's most frequent one, averaged over ids. Two
nulls: the same model with each router's weight entries randomly permuted (a random router: still a function of
the hidden state, so at layer 0, where the hidden state is nearly the token embedding, it is token-specific too),
and chance (the top-1 labels shuffled across tokens: same load, no token-expert link).

| layer | max/mean (top-{t["top_k"]}) | max/mean (top-1) | vocab. specialization | shuffled router | chance |
|---|---|---|---|---|---|
{layer_rows}

## Quality bar
{checks}

## Samples (temperature 0.7, top-40, seed 0; the prompt is the first line)
{samples}

## Files
`config.json`, `model.safetensors`, `tokenizer.json`: load with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained`. `card.json` holds every figure above. `held_out/<domain>.txt` are short held-out
excerpts (never trained on) that the app's presets and the tests use. `series/` is the routing of those
excerpts (256 tokens each) every {t["snapshot_every"]} steps of training, step 0 to the last: the app's Training
view and `python -m moe_core training-series demo-mixtral` read it.
"""


def write_card(out: Path, work: Path) -> dict[str, Any]:
    torch.set_num_threads(2)
    card = evaluate(out, work)
    ship_held_out_samples(out, work)
    (out / "card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "README.md").write_text(_markdown(card), encoding="utf-8")
    print(f"wrote {out / 'README.md'}", flush=True)
    return card
