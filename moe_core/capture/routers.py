"""Finding a model's MoE layers, and the per-architecture adapter table for their quirks.

Discovery reads the model's own declaration (`_can_record_outputs["router_logits"]`), falling back to
any `gate`/`router` module that has an `experts` sibling. Everything that differs between families
lives in `ADAPTERS`, one row per transformers `model_type`; the capture code has no per-family branches.
A model class transformers does not ship (remote code) has no row: its MoE layers are found by structure
(`structural_blocks`) and captured by moe_core.capture.generic.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

Scoring = Callable[[torch.Tensor], torch.Tensor]


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over experts, written out: for the short expert axis it is ~2x faster than Tensor.softmax."""
    logits = logits.float()
    shifted = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return shifted / shifted.sum(dim=-1, keepdim=True)


SCORINGS: dict[str, Scoring] = {
    "softmax": _softmax,
    "sigmoid": lambda logits: logits.float().sigmoid(),
    "sqrtsoftplus": lambda logits: torch.nn.functional.softplus(logits.float()).sqrt(),  # DeepSeek-V4
    "probabilities": lambda scores: scores.float(),  # the router reports probabilities already (Gemma 4)
}
# Choices under which the experts module is called as experts(hidden [T, H], index [T, k], weights [T, k]).
EXPERTS_CALL_CHOICES = frozenset({"experts_call", "skip_call"})


@dataclass(frozen=True)
class Adapter:
    """How one architecture routes, where capture cannot read it off the modules.

    scoring:          the function that turns router logits into the model's own probabilities.
    logits_index:     which element of the router's output tuple holds the logits.
    router_names:     attribute names a router may have inside its MoE block.
    experts_name:     attribute name of the routed-experts module beside the router.
    choice:           where the consumed experts and weights are read (a key of capture.CHOICE_READERS):
                      "experts_call"  experts(hidden, top_k_index, top_k_weights), the common case;
                      "one_hot_call"  experts(hidden, one-hot [T, 1, E] with capacity drops zeroed, weights [T, 1]);
                      "dense_scores"  the router's output[0] is a dense [T, E] score, zero off the top-k (Llama 4);
                      "skip_call"     experts_call where a zero weight stands for the router's skip class (Zaya);
                      "sorted_groups" the router's own grouping: slots sorted by expert plus per-expert counts (JetMoE);
                      "module_calls"  one module per expert, called on its rows (remote code: moe_core.capture.generic).
    extra_routers:    class names of routers the model does not declare for output_router_logits (DeepSeek-V4's
                      hash routers, which pick experts from a token-id table); traced like the declared ones.
    untraced:         module-path parts whose routers are left out: Switch's "decoder" (the trace covers the
                      input text, which the encoder reads), JetMoE's "self_attention" (attention-head experts).
    weights_follow_probs: the combine weights are the chosen probs up to a per-token factor (renormalised,
                      scaled); false where the router reshapes them (PhiMoE's sparsemixer).
    computed_experts: the config attribute counting the classes that are real experts; classes from there on
                      are zero-computation (LongCat's identity experts, Zaya's skip). "": every class is real.
    zero_expert_module: the experts module's attribute that computes every zero-computation class
                      (LongCat's identity_expert); the exactness proof ablates it as one.
    notes:            quirks a reader of the trace should see.
    """

    scoring: str = "softmax"
    logits_index: int | None = None  # None: the index the model declares for router_logits
    router_names: tuple[str, ...] = ("gate", "router")
    experts_name: str = "experts"
    choice: str = "experts_call"
    extra_routers: tuple[str, ...] = ()
    untraced: tuple[str, ...] = ()
    weights_follow_probs: bool = True
    computed_experts: str = ""
    zero_expert_module: str = ""
    notes: tuple[str, ...] = field(default=())


DEFAULT_ADAPTER = Adapter()

SIGMOID_BIAS_NOTE = "experts chosen with a bias and/or group limit; weights from unbiased sigmoid scores"

SIGMOID_WITH_BIAS = Adapter(scoring="sigmoid", notes=(SIGMOID_BIAS_NOTE,))
# Sigmoid routers that select with a bias (and often a group limit): DeepSeek-V3 and its descendants.
SIGMOID_WITH_BIAS_FAMILIES = (
    "afmoe", "axk1", "axk2", "bailing_hybrid", "beam", "deepseek_v3", "deepseek_v32", "dots1", "dots3_note_text",
    "exaone_moe", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa", "hy_v3", "hy_v4", "kimi_linear", "kolibri1",
    "laguna", "lfm2_moe", "mimo_v2_flash", "minimax_m2", "nemotron_h", "solar_open",
)  # fmt: skip

ADAPTERS: dict[str, Adapter] = {
    **dict.fromkeys(SIGMOID_WITH_BIAS_FAMILIES, SIGMOID_WITH_BIAS),
    "flint": Adapter(scoring="sigmoid"),
    "llama4_text": Adapter(
        scoring="sigmoid",
        choice="dense_scores",
        notes=("weights are sigmoid of the top-k logits and scale each expert's input",),
    ),
    "switch_transformers": Adapter(
        choice="one_hot_call",
        untraced=("decoder",),
        notes=("real expert capacity: tokens over capacity are DROPPED (-1); encoder layers traced",),
    ),
    "longcat_flash": Adapter(
        computed_experts="n_routed_experts",
        zero_expert_module="identity_expert",
        notes=("experts from n_routed_experts on are zero-computation: they pass the token through, scaled",),
    ),
    "deepseek_v4": Adapter(
        scoring="sqrtsoftplus",
        extra_routers=("DeepseekV4HashRouter",),
        notes=(
            "the first MoE layers are hash-routed: experts come from a fixed token-id table, weights from the router",
            SIGMOID_BIAS_NOTE.replace("sigmoid", "sqrt(softplus)"),
        ),
    ),
    "gemma4_text": Adapter(
        scoring="probabilities",
        weights_follow_probs=False,
        notes=(
            "the router reports softmax probabilities, not logits: the logits column holds those probabilities",
            "weights: renormalised top-k probabilities times a learned per-expert scale",
        ),
    ),
    "jetmoe": Adapter(
        choice="sorted_groups",
        experts_name="input_linear",
        untraced=("self_attention",),
        notes=("FFN experts traced; the mixture of attention heads (MoA) routes separately and is not shown",),
    ),
    "zaya": Adapter(
        choice="skip_call",
        computed_experts="num_experts",
        notes=("the last expert is a skip: the token gets no expert for that slot",),
    ),
    "phimoe": Adapter(notes=("sparsemixer top-2: combine weights do not sum to 1",), weights_follow_probs=False),
    "gpt_oss": Adapter(notes=("weights: softmax over the top-k logits only",)),
    "granitemoe": Adapter(notes=("weights: softmax over the top-k logits only",)),
}


def adapter_for(model_type: str) -> Adapter:
    """The adapter of a model type. A multimodal wrapper (gemma4, llama4, dots3_note) routes like its text
    decoder, which the table lists as "<type>_text". For a model object, use adapter_of: remote code must not
    get the row of a built-in type its config happens to name."""
    return ADAPTERS.get(model_type) or ADAPTERS.get(f"{model_type}_text") or DEFAULT_ADAPTER


# Remote-code experts that are a ModuleList are called one module per expert, never as experts(hidden, index,
# weights), so the capacity-bound forward and the Closer Look (which call the experts that way) say so in a
# sentence instead of failing mid-pass.
MODULE_CALLS = Adapter(choice="module_calls")


def adapter_of(model: nn.Module) -> Adapter:
    """The adapter row that describes this model object. Transformers' own classes: their model type's row.
    Remote code (is_generic), whatever model_type its config names, since a built-in row describes transformers'
    classes and not this code: MODULE_CALLS where its experts are one module each, else the default row."""
    if not is_generic(model):
        return adapter_for(model.config.model_type)
    blocks, _ = find_moe_blocks(model, model.config.model_type)  # structural_blocks, found once per model
    per_module = any(isinstance(b.experts, nn.ModuleList | nn.ModuleDict) for b in blocks)
    return MODULE_CALLS if per_module else DEFAULT_ADAPTER


@dataclass(frozen=True)
class MoeBlock:
    """One MoE layer: its router and routed-experts modules, and the model's layer index."""

    name: str  # module path of the block, e.g. "model.layers.3.mlp"
    layer: int
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    num_experts: int = 0  # E, where discovery knew it from the structure (generic capture reads the router by it)


class NoRoutersError(ValueError):
    """The model has no MoE layers this tool can trace."""


_LAYER_NUMBER = re.compile(r"\.(\d+)(?:\.|$)")


def layer_number(module_name: str) -> int:
    """The layer index in a module path: 'model.layers.12.mlp.gate' -> 12."""
    match = _LAYER_NUMBER.search(module_name)
    if match is None:
        raise ValueError(f"cannot find a layer number in module name {module_name!r}")
    return int(match.group(1))


def declared_router_classes(model: nn.Module) -> dict[type[nn.Module], int]:
    """Router class -> index of the logits in its output, as declared for `output_router_logits`.

    Read from every submodule's class: wrappers (Llama4ForCausalLM, Switch's encoder/decoder stacks)
    often declare it only on an inner model.
    """
    declared: dict[type[nn.Module], int] = {}
    for module in model.modules():
        for key, value in (getattr(type(module), "_can_record_outputs", None) or {}).items():
            if "router_logits" not in key:
                continue
            for recorder in value if isinstance(value, list | tuple) else [value]:
                target = getattr(recorder, "target_class", recorder)
                if isinstance(target, type):
                    declared.setdefault(target, getattr(recorder, "index", 0) or 0)
    return declared


_BLOCKS_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[list[MoeBlock], int]] = weakref.WeakKeyDictionary()


def find_moe_blocks(model: nn.Module, model_type: str) -> tuple[list[MoeBlock], int]:
    """All traceable MoE blocks in layer order, and the router output index that holds the logits.

    Remembered per model object (walking every module costs more than the hooks themselves).
    """
    if model not in _BLOCKS_CACHE:
        _BLOCKS_CACHE[model] = _discover_blocks(model, model_type)
    return _BLOCKS_CACHE[model]


def is_generic(model: nn.Module) -> bool:
    """Is `model` a class transformers does not ship (remote code, a hand-built module)? Then no adapter row can
    describe it, whatever its model_type says, and capture finds its MoE layers by structure
    (moe_core.capture.generic)."""
    return not type(model).__module__.startswith("transformers.")


def _discover_blocks(model: nn.Module, model_type: str) -> tuple[list[MoeBlock], int]:
    if is_generic(model):
        return structural_blocks(model), 0
    adapter = adapter_for(model_type)
    declared = declared_router_classes(model)
    classes = tuple(declared)
    modules = dict(model.named_modules())
    blocks: list[MoeBlock] = []
    for name, module in modules.items():
        if "." not in name:
            continue
        parent_name, attribute = name.rsplit(".", 1)
        parent = modules[parent_name]
        if classes:
            is_router = isinstance(module, classes) or type(module).__name__ in adapter.extra_routers
        else:
            is_router = attribute in adapter.router_names
        experts = getattr(parent, adapter.experts_name, None)
        if not is_router or not isinstance(experts, nn.Module):
            continue
        if any(part in name for part in adapter.untraced):
            continue
        blocks.append(MoeBlock(parent_name, layer_number(parent_name), parent, module, experts))
    if not blocks:
        raise NoRoutersError(f"{model_type} is a dense model: no routers found")
    declared_index = next((i for b in blocks for cls, i in declared.items() if isinstance(b.router, cls)), 0)
    index = adapter.logits_index if adapter.logits_index is not None else declared_index
    return sorted(blocks, key=lambda b: b.layer), index


ROUTER_NAMES = ("gate", "router")  # preferred when a block has more than one module that could be its router


def expert_count(module: nn.Module) -> int:
    """E when `module` is a set of routed experts, else 0: a ModuleList/ModuleDict of E >= 2 modules of one class,
    or a fused module whose every parameter is [E, ...] with 3 or more axes (a router's [E, H] weight is not)."""
    if isinstance(module, nn.ModuleList | nn.ModuleDict):
        children = list(module.children())
        same = len(children) >= 2 and len({type(child) for child in children}) == 1
        return len(children) if same and any(True for _ in children[0].parameters()) else 0
    shapes = [p.shape for p in module.parameters()]
    leading = {shape[0] for shape in shapes}
    fused = shapes and len(leading) == 1 and all(len(shape) >= 3 for shape in shapes)
    return int(next(iter(leading))) if fused and next(iter(leading)) >= 2 else 0


def scores_experts(module: nn.Module, num_experts: int) -> bool:
    """Could `module` score E experts? One of its matrices has E rows (nn.Linear(H, E), a bare [E, H] weight)."""
    return any(p.ndim == 2 and p.shape[0] == num_experts for p in module.parameters())


def _router_beside(
    parent: nn.Module, experts_name: str, num_experts: int, declared: tuple[type, ...]
) -> nn.Module | None:
    """The router among `parent`'s other children: a declared router class where the model declares any, else a
    module with an E-row matrix; a child named gate/router first."""
    candidates = [
        (name, child)
        for name, child in parent.named_children()
        if name != experts_name
        and (isinstance(child, declared) if declared else scores_experts(child, num_experts))
        and not expert_count(child)
    ]
    candidates.sort(key=lambda item: item[0] not in ROUTER_NAMES)
    return candidates[0][1] if candidates else None


def structural_blocks(model: nn.Module) -> list[MoeBlock]:
    """MoE blocks found by shape alone: a set of E experts (expert_count) beside a router that scores E experts.

    Where the model declares router classes for output_router_logits, only those count as routers. Works on the
    meta device (shapes only), so a checkpoint is checked before its weights load.
    """
    declared = tuple(declared_router_classes(model))
    blocks = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            num_experts = expert_count(child)
            router = _router_beside(parent, name, num_experts, declared) if num_experts else None
            if router is not None and _LAYER_NUMBER.search(parent_name or ""):
                blocks.append(MoeBlock(parent_name, layer_number(parent_name), parent, router, child, num_experts))
    if not blocks:
        raise NoRoutersError(f"{type(model).__name__} is a dense model: no routers found beside a set of experts")
    return sorted(blocks, key=lambda b: b.layer)
