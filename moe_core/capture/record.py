"""Record routing during one ordinary forward pass, with hooks that act only on the caller's own passes.

For each MoE block: a forward hook on the router keeps its logits, and a forward pre-hook on the
routed-experts module keeps the expert indices and combine weights the experts actually consume.
Those are what the model used, which for bias- or group-limited routers is not top-k of the logits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from moe_core.capture import generic
from moe_core.capture.hooks import Hook, forward_lock, hooks_active
from moe_core.capture.routers import SCORINGS, MoeBlock, adapter_of, find_moe_blocks, is_generic
from moe_core.capture.tokens import tokenize
from moe_core.traces.types import DROPPED, ModelInfo, RoutingTrace, Tokens, rank_slots


@dataclass
class _LayerRecord:
    logits: list[torch.Tensor] = field(default_factory=list)
    experts: list[torch.Tensor] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)


def _first_tensor(output: Any, index: int) -> torch.Tensor:
    return output[index] if isinstance(output, tuple | list) else output


Choice = tuple[torch.Tensor, torch.Tensor]  # (expert indices [T, k], combine weights [T, k])


INDEX_NAMES, WEIGHT_NAMES = ("top_k_index", "selected_experts"), ("top_k_weights", "routing_weights")


def experts_call_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, weights) exactly as handed to experts(hidden, index, weights), positionally or by name."""
    values = [*args[1:3], *(kwargs[name] for name in (*INDEX_NAMES, *WEIGHT_NAMES) if name in kwargs)]
    if len(values) < 2:
        raise RuntimeError("the experts module was not called as experts(hidden, top_k_index, top_k_weights)")
    return values[0], values[1]


def _experts_call(block: MoeBlock, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Choice:
    """experts(hidden, top_k_index, top_k_weights): read the two tensors as passed."""
    index, weights = experts_call_tensors(args, kwargs)
    return index.reshape(-1, index.shape[-1]), weights.reshape(-1, weights.shape[-1])


def _one_hot_call(block: MoeBlock, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Choice:
    """experts(hidden, one-hot [T, 1, E], weights [T, 1]) (Switch): an all-zero row is a capacity drop."""
    one_hot, weights = experts_call_tensors(args, kwargs)
    mask = one_hot.reshape(-1, one_hot.shape[-1])
    index = torch.where(mask.any(dim=-1), mask.argmax(dim=-1), DROPPED)
    return index[:, None], weights.reshape(-1, 1)


def _dense_scores(block: MoeBlock, output: Any) -> Choice:
    """The router's dense [T, E] scores, zero (sigmoid of -inf) off the chosen experts (Llama 4)."""
    scores = output[0].reshape(-1, output[0].shape[-1])
    weights, index = scores.topk(block.router.top_k, dim=-1)
    return index, weights


def _skip_call(block: MoeBlock, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Choice:
    """experts(hidden, top_k_index, top_k_weights) where the router's last class means "no expert" (Zaya).

    The model hands the experts (expert 0, weight 0) for a skip, so a zero weight is reported as the skip
    class (index num_experts) rather than as expert 0, which does not run for it.
    """
    index, weights = _experts_call(block, args, kwargs)
    return torch.where(weights == 0, block.experts.num_experts, index), weights


def _sorted_groups(block: MoeBlock, output: Any) -> Choice:
    """JetMoE's router hands the experts its [T·k] slots sorted by expert plus each expert's slot count; sorted
    slot j (original slot index_sorted[j]) goes to the expert whose run holds j, with gate batch_gates[j]."""
    index_sorted, _, batch_gates, expert_size = output[:4]
    counts = torch.as_tensor(expert_size, device=index_sorted.device)
    expert_of_sorted = torch.repeat_interleave(torch.arange(len(counts), device=index_sorted.device), counts)
    index = torch.empty_like(index_sorted)
    index[index_sorted] = expert_of_sorted
    weights = torch.empty_like(batch_gates)
    weights[index_sorted] = batch_gates
    top_k = block.router.top_k
    return index.reshape(-1, top_k), weights.reshape(-1, top_k)


# choice name -> (read from the router's output instead of the experts' input?, reader)
CHOICE_READERS: dict[str, tuple[bool, Callable[..., Choice]]] = {
    "experts_call": (False, _experts_call),
    "one_hot_call": (False, _one_hot_call),
    "skip_call": (False, _skip_call),
    "dense_scores": (True, _dense_scores),
    "sorted_groups": (True, _sorted_groups),
}


@contextlib.contextmanager
def recording(
    blocks: Sequence[MoeBlock], logits_index: int, choice: str = "experts_call"
) -> Iterator[list[_LayerRecord]]:
    """Record every block's router logits and consumed choice for the forward passes inside the `with`.

    Only this thread's (or task's) passes are recorded (moe_core.capture.hooks), so visitors sharing one model
    never see each other's routing.
    """
    on_router, read_choice = CHOICE_READERS[choice]
    records = [_LayerRecord() for _ in blocks]
    hooks: list[Hook] = []
    for block, record in zip(blocks, records, strict=True):

        def keep(index: torch.Tensor, weights: torch.Tensor, record: _LayerRecord = record) -> None:
            record.experts.append(index)
            record.weights.append(weights)

        def after_router(
            _module: nn.Module, _inputs: Any, output: Any, record: _LayerRecord = record, block: MoeBlock = block
        ) -> None:
            logits = _first_tensor(output, logits_index)
            record.logits.append(logits.reshape(-1, logits.shape[-1]))
            if on_router:
                keep(*read_choice(block, output), record=record)

        def before_experts(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], record: _LayerRecord = record,
            block: MoeBlock = block,
        ) -> None:  # fmt: skip
            keep(*read_choice(block, args, kwargs), record=record)

        hooks.append((block.router, "forward", after_router))
        if not on_router:
            hooks.append((block.experts, "pre", before_experts))
    with hooks_active(hooks):
        yield records


def _gather(per_layer: list[list[torch.Tensor]], keep: torch.Tensor | None) -> torch.Tensor:
    """[L, real tokens, ...] on the CPU: each layer's one router call, padding rows dropped (`keep`; None when
    there is no padding), in one stack."""
    if any(len(calls) != 1 for calls in per_layer):
        raise RuntimeError(f"expected one router call per layer in one forward, got {[len(c) for c in per_layer]}")
    stacked = torch.stack([calls[0].cpu() for calls in per_layer])  # layers may sit on different devices
    return stacked if keep is None else stacked[:, keep]


_INFO_CACHE: weakref.WeakKeyDictionary[nn.Module, ModelInfo] = weakref.WeakKeyDictionary()


def model_info(model: nn.Module, blocks: Sequence[MoeBlock], name: str, num_experts: int, top_k: int) -> ModelInfo:
    """What the trace records about the model; remembered per model object, only the name varies per call."""
    cached = _INFO_CACHE.get(model)
    parameter = next(model.parameters())
    device, dtype = str(parameter.device), str(parameter.dtype).removeprefix("torch.")
    wanted = (num_experts, top_k, device, dtype)
    if cached is None or (cached.num_experts, cached.top_k, cached.device, cached.dtype) != wanted:
        cached = _INFO_CACHE[model] = _describe(model, blocks, num_experts, top_k, device, dtype)
    return replace(cached, name=name)


def _describe(
    model: nn.Module, blocks: Sequence[MoeBlock], num_experts: int, top_k: int, device: str, dtype: str
) -> ModelInfo:
    config = model.config
    adapter = adapter_of(model)
    shared = 1 if any(hasattr(b.block, a) for b in blocks for a in ("shared_expert", "shared_experts")) else 0
    shared = getattr(config, "n_shared_experts", None) or getattr(config, "num_shared_experts", None) or shared
    return ModelInfo(
        name="",
        architecture=config.model_type,
        num_experts=num_experts,
        top_k=top_k,
        scoring=adapter.scoring,
        num_layers=getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 0),
        moe_layers=tuple(b.layer for b in blocks),
        num_shared_experts=int(shared),
        context_length=context_length(model),
        device=device,
        dtype=dtype,
        notes=adapter.notes,
    )


def context_length(model: nn.Module) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def forward_text(model: nn.Module, batch: dict[str, torch.Tensor], **options: Any) -> Any:
    """One pass of the model over the input text, on the model's device: the encoder of an encoder-decoder
    model (it reads the text), a causal LM without a cache (hybrid models' caches reject a prompt-only pass).

    Capture needs the routing, not the language-model head: where the model takes `logits_to_keep`, only the last
    position's logits are computed ([T, vocab] logits cost ~1 GB at DeepSeek-V3's vocabulary and 8,192 tokens).
    """
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items()}
    with forward_lock(model):
        if getattr(model.config, "is_encoder_decoder", False):
            return model.get_encoder()(**inputs, **options)
        keep = {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}
        return model(**inputs, use_cache=False, **keep, **options)


@functools.lru_cache(maxsize=64)
def _takes_logits_to_keep(model_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@dataclass(frozen=True)
class TokenizedBatch:
    """Texts tokenised for one pass: the trace's Tokens table, the right-padded model batch, which were cut."""

    texts: tuple[str, ...]
    tokens: Tokens
    batch: dict[str, torch.Tensor]
    truncated: tuple[bool, ...]


def tokenize_texts(
    model: nn.Module, tokenizer: Any, texts: str | Sequence[str], max_tokens: int | None = None
) -> TokenizedBatch:
    """Tokenise `texts` for `model`, cut to its context (or `max_tokens`); blank texts are a ValueError."""
    texts = (texts,) if isinstance(texts, str) else tuple(texts)
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("empty text: give at least one non-blank text to trace")
    limits = [x for x in (max_tokens, context_length(model)) if x]
    tokens, batch, truncated = tokenize(tokenizer, texts, min(limits) if limits else None)
    return TokenizedBatch(texts, tokens, batch, truncated)


def batch_of_ids(
    ids: Sequence[Sequence[int]], pad: int, tokens: Tokens | None = None, texts: tuple[str, ...] | None = None
) -> TokenizedBatch:
    """A right-padded batch of given token ids, one row per sequence, for trace_batch. `tokens`/`texts` keep a
    recorded trace's own table (re-running its very tokens on another model, dtype or revision); without them the
    display text and offsets are empty (a corpus never shows them)."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, values in enumerate(ids):
        input_ids[row, : len(values)] = torch.as_tensor(values, dtype=torch.long)
        mask[row, : len(values)] = 1
    lengths = [len(row) for row in ids]
    if tokens is None:
        total = sum(lengths)
        tokens = Tokens(
            ids=np.concatenate([np.asarray(row, dtype=np.int64) for row in ids]),
            text=("",) * total,
            offsets=np.zeros((total, 2), dtype=np.int64),
            sequence=np.repeat(np.arange(len(ids)), lengths),
            position=np.concatenate([np.arange(n) for n in lengths]),
        )
    batch = {"input_ids": input_ids, "attention_mask": mask}
    return TokenizedBatch(texts or ("",) * len(ids), tokens, batch, (False,) * len(ids) if texts else ())


def retrace(model: nn.Module, tokenizer: Any, routing: RoutingTrace, name: str | None = None) -> RoutingTrace:
    """`routing`'s very token ids routed by `model`: the other side of a comparison (an engine's dump against a
    transformers run, bf16 against fp32, a fine-tune against its base). The tokens table is kept as recorded."""
    tokens = routing.tokens
    ids = [tokens.ids[tokens.sequence == s].tolist() for s in range(routing.num_sequences)]
    vocabulary = getattr(model.config, "vocab_size", None)
    if vocabulary is not None and int(tokens.ids.max()) >= vocabulary:
        raise ValueError(f"token id {int(tokens.ids.max())} is past {name or 'the model'}'s vocabulary ({vocabulary})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return trace_batch(model, batch_of_ids(ids, pad, tokens, routing.texts), name=name)[0]


@torch.inference_mode()
def trace_batch(
    model: nn.Module,
    tokenized: TokenizedBatch,
    *,
    name: str | None = None,
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], Any] = forward_text,
) -> tuple[RoutingTrace, Any]:
    """Route one tokenised batch through `model` and return (its RoutingTrace, what `forward` returned).

    `forward` makes the pass; pass one that returns the language-model logits when they are needed too.
    """
    blocks, logits_index = find_moe_blocks(model, model.config.model_type)
    mask = tokenized.batch["attention_mask"].reshape(-1).bool()
    keep = None if bool(mask.all()) else mask
    read = _generic_arrays if is_generic(model) else _adapter_arrays
    (logits, experts, weights, probs, scoring, notes), output = read(
        model, blocks, logits_index, tokenized, forward, keep
    )
    label = name or model.config.name_or_path or model.config.model_type
    info = model_info(model, blocks, label, logits.shape[-1], experts.shape[-1])
    if scoring is not None:  # generic capture: the scoring and the notes come from this pass, not a table
        info = replace(info, scoring=scoring, notes=(*info.notes, *notes))
    ranked_experts, ranked_weights = rank_slots(experts.numpy(), weights.numpy())
    routing = RoutingTrace(
        model=info,
        texts=tokenized.texts,
        tokens=tokenized.tokens,
        logits=logits.numpy(),
        probs=probs.numpy(),
        experts=ranked_experts,
        weights=ranked_weights,
        truncated=tokenized.truncated,
    )
    return routing, output


Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str | None, tuple[str, ...]]
# (logits, experts, weights, probs [L, T, ...], scoring and notes where the pass decided them, else None and ())


def _adapter_arrays(
    model: nn.Module, blocks: Sequence[MoeBlock], logits_index: int, tokenized: TokenizedBatch, forward: Any,
    keep: torch.Tensor | None,
) -> tuple[Arrays, Any]:  # fmt: skip
    """A family in the adapter table: the table says where the choice is read and how the router scores."""
    adapter = adapter_of(model)
    with recording(blocks, logits_index, adapter.choice) as records:
        output = forward(model, tokenized.batch)
    logits = _gather([r.logits for r in records], keep).float()
    experts = _gather([r.experts for r in records], keep).long()
    weights = _gather([r.weights for r in records], keep).float()
    return (logits, experts, weights, SCORINGS[adapter.scoring](logits), None, ()), output


def _generic_arrays(
    model: nn.Module, blocks: Sequence[MoeBlock], _logits_index: int, tokenized: TokenizedBatch, forward: Any,
    keep: torch.Tensor | None,
) -> tuple[Arrays, Any]:  # fmt: skip
    """A family with no adapter: the choice read from the experts' own calls (moe_core.capture.generic), flagged
    where it had to be recomputed, and the scoring inferred from the consumed weights."""
    with generic.generic_recording(blocks) as records:
        output = forward(model, tokenized.batch)
    choices = [generic.resolve(model, block, record) for block, record in zip(blocks, records, strict=True)]
    logits, experts, weights = (
        _gather([[getattr(choice, name)] for choice in choices], keep) for name in ("logits", "experts", "weights")
    )
    logits, experts, weights = logits.float(), experts.long(), weights.float()
    scoring = generic.infer_scoring(logits, experts, weights)
    arrays = (logits, experts, weights, SCORINGS[scoring](logits), scoring, generic.status_notes(choices))
    return arrays, output


def trace(
    model: nn.Module,
    tokenizer: Any,
    texts: str | Sequence[str],
    *,
    name: str | None = None,
    max_tokens: int | None = None,
) -> RoutingTrace:
    """Run `texts` through `model` once and return how every token was routed at every MoE layer.

    Texts longer than the model's context (or `max_tokens`) are truncated; `trace.truncated` says which.
    """
    return trace_batch(model, tokenize_texts(model, tokenizer, texts, max_tokens), name=name)[0]
