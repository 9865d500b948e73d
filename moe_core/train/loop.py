"""Train the bundled demo MoE: a small Mixtral (8 experts, top-2) on five domains, on 2 CPU cores.

Deterministic given the seed: the batch of step s depends only on (seed, s), so a run resumed from
a checkpoint continues exactly as an uninterrupted one would. Usage: `python -m moe_core.train --help`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerFast

from moe_core.metrics import switch_aux_loss
from moe_core.train import corpus
from moe_core.train.tokenizer import save_tokenizer, train_tokenizer


@dataclass
class TrainConfig:
    seed: int = 1234
    # model
    vocab_size: int = 4096  # byte-level BPE
    hidden_size: int = 128
    intermediate_size: int = 256  # per expert
    num_layers: int = 4
    num_heads: int = 4
    num_experts: int = 8
    top_k: int = 2
    max_positions: int = 4096  # RoPE; trained on seq_len, longer inputs still route
    # data
    seq_len: int = 512
    rows_per_domain: int = 2  # every batch holds each domain equally: batch = 5 domains x 2 rows
    tokenizer_sample_chars: int = 2_000_000  # per domain
    # optimisation
    steps: int = 2000
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    balance_coef: float = 0.05  # Switch load-balancing loss, averaged over layers (each layer balanced)
    # bookkeeping
    log_every: int = 20
    checkpoint_every: int = 100
    snapshot_every: int = 20  # record the held-out texts' routing this often: the shipped training series
    threads: int = 2


def _tokenize_domain(tokenizer: PreTrainedTokenizerFast, text: str) -> np.ndarray:
    """Token ids of a long text, encoded in line-aligned chunks to bound memory."""
    chunks, start, size = [], 0, 100_000
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end == -1 else end + 1
        chunks.append(text[start:end])
        start = end
    encodings = tokenizer.backend_tokenizer.encode_batch(chunks)
    return np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encodings])


def prepare_data(
    config: TrainConfig, work: Path, tokenizer_from: Path | None = None
) -> tuple[PreTrainedTokenizerFast, dict[str, dict[str, np.ndarray]]]:
    """Build (or reuse from `work/`) the tokenizer and each domain's train / held-out token ids.

    `tokenizer_from` (a folder with tokenizer.json) skips training one: BPE training breaks ties between equally
    frequent merges differently from run to run, so reproducing a model needs its own tokenizer."""
    data_dir = work / "data"
    tokenizer_dir = work / "tokenizer"
    if not (data_dir / "done").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        print("assembling corpus ...", flush=True)
        texts = {name: corpus.split_domain(source()) for name, source in corpus.DOMAINS.items()}
        if tokenizer_from is None:
            tokenizer = train_tokenizer(
                {n: t[0] for n, t in texts.items()}, config.vocab_size, config.tokenizer_sample_chars
            )
        else:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_from)
        save_tokenizer(tokenizer, tokenizer_dir)
        for name, (train_text, held_out_text) in texts.items():
            np.save(data_dir / f"{name}.train.npy", _tokenize_domain(tokenizer, train_text))
            np.save(data_dir / f"{name}.held_out.npy", _tokenize_domain(tokenizer, held_out_text))
            (data_dir / f"{name}.held_out.txt").write_text(held_out_text, encoding="utf-8")
        (data_dir / "done").write_text("ok")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    data = {
        name: {split: np.load(data_dir / f"{name}.{split}.npy") for split in ("train", "held_out")}
        for name in corpus.DOMAINS
    }
    return tokenizer, data


def batch_for_step(config: TrainConfig, streams: dict[str, np.ndarray], step: int) -> torch.Tensor:
    """Rows of seq_len tokens at random offsets, rows_per_domain from every domain; a pure function of step."""
    rng = np.random.default_rng([config.seed, step])
    rows = []
    for stream in streams.values():
        for offset in rng.integers(0, len(stream) - config.seq_len, size=config.rows_per_domain):
            rows.append(stream[offset : offset + config.seq_len].astype(np.int64))
    return torch.from_numpy(np.stack(rows))


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def build_model(config: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> MixtralForCausalLM:
    torch.manual_seed(config.seed)
    model_config = MixtralConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        num_local_experts=config.num_experts,
        num_experts_per_tok=config.top_k,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        router_aux_loss_coef=config.balance_coef,
    )
    return MixtralForCausalLM(model_config)


def layer_balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch's N·Σ f_i·P_i for each layer separately, averaged: balances every layer, not just their sum."""
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)
        chosen = probs.topk(top_k, dim=-1).indices.reshape(-1)
        fraction = torch.bincount(chosen, minlength=probs.shape[-1]).float() / chosen.numel()
        losses.append(switch_aux_loss(fraction, probs.mean(dim=0)))
    return torch.stack(losses).mean()


def training_losses(model: MixtralForCausalLM, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token cross-entropy, layer balance loss) for one batch."""
    out = model(input_ids=ids, output_router_logits=True, use_cache=False)
    lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))
    return lm, layer_balance_loss(out.router_logits, top_k)


def _save_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seconds: float
) -> None:
    """Atomic: a run killed mid-write leaves the previous checkpoint intact."""
    partial = path.with_suffix(".partial")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "seconds": seconds}
    torch.save(state, partial)
    partial.replace(path)


class Snapshots:
    """The training series: the bundled held-out texts traced every `snapshot_every` steps into `work/series`,
    in eval mode, between optimiser steps (tracing reads the weights and draws no random numbers, so the run
    trains exactly as it would without it)."""

    def __init__(self, folder: Path, tokenizer: PreTrainedTokenizerFast, every: int, last: int) -> None:
        from moe_core.series.runner import SERIES_TOKENS, default_texts
        from moe_core.series.store import open_series, recorded_steps

        self.folder, self.tokenizer, self.every, self.last = folder, tokenizer, every, last
        self.manifest = open_series(folder, "demo-mixtral", default_texts(), SERIES_TOKENS)
        self.done = recorded_steps(folder, self.manifest)

    def due(self, step: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == self.last) and step not in self.done

    def take(self, model: torch.nn.Module, step: int) -> None:
        from moe_core.series.runner import snapshot

        model.eval()
        with torch.no_grad():
            snapshot(model, self.tokenizer, self.folder, self.manifest, step, f"step {step}")
        model.train()
        self.done.add(step)


def train(config: TrainConfig, work: Path, out: Path, tokenizer_from: Path | None = None) -> None:
    torch.set_num_threads(config.threads)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer, data = prepare_data(config, work, tokenizer_from)
    streams = {name: splits["train"] for name, splits in data.items()}
    print({name: len(s) for name, s in streams.items()}, "train tokens per domain", flush=True)
    model = build_model(config, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )
    checkpoint = work / "checkpoint.pt"
    step, seconds_before = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        seconds_before = state.get("seconds", 0.0)
        print(f"resumed at step {step}", flush=True)
    (work / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    model.train()
    snapshots = Snapshots(work / "series", tokenizer, config.snapshot_every, config.steps)
    if snapshots.due(step):
        snapshots.take(model, step)
    started, tokens_per_step = time.time(), config.seq_len * config.rows_per_domain * len(streams)
    start_step = step
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        lm_loss, balance = training_losses(model, batch_for_step(config, streams, step), config.top_k)
        optimizer.zero_grad(set_to_none=True)
        (lm_loss + config.balance_coef * balance).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.time() - started
            rate = (step - start_step) * tokens_per_step / elapsed
            eta = (config.steps - step) * tokens_per_step / rate
            print(
                f"step {step}/{config.steps} loss {lm_loss.item():.3f} balance {balance.item():.3f} "
                f"{rate:,.0f} tok/s eta {eta / 60:.1f} min",
                flush=True,
            )
        if snapshots.due(step):
            snapshots.take(model, step)
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(checkpoint, model, optimizer, step, seconds_before + time.time() - started)
    seconds = round(seconds_before + time.time() - started)
    record = {**asdict(config), "tokens_seen": step * tokens_per_step, "train_seconds": seconds}
    (work / "train_record.json").write_text(json.dumps(record, indent=2))
    export(model, tokenizer, out, work / "series")


def export(model: MixtralForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path, series: Path) -> None:
    """save_pretrained (safetensors) + tokenizer: what AutoModelForCausalLM / AutoTokenizer load; and the
    training series beside them (out/series), which the Training view and `training-series demo-mixtral` read."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    if series.is_dir():
        shutil.rmtree(out / "series", ignore_errors=True)
        shutil.copytree(series, out / "series")
    print(f"saved to {out}", flush=True)
