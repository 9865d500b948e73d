"""Loading an MoE model by bundled name, local folder or hub id, with progress and plain-language errors."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
from transformers.utils import logging as transformers_logging

from moe_core.capture.routers import NoRoutersError, find_moe_blocks
from moe_core.defaults import ASSETS, BUNDLED_MODELS, DEMO_MODEL
from moe_core.devices import Placement, choose_placement

ALLOWED_MODELS_ENV = "MOE_EXPLORER_ALLOWED_MODELS"  # comma-separated; set on a public deployment
MAX_MODEL_ID_CHARS = 512  # longer strings are no model (a path component over 255 bytes raised OSError)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?", re.ASCII)  # org/name, as the hub allows

Progress = Callable[[str, float], None]  # (what is happening, fraction done)


__all__ = ["ASSETS", "BUNDLED_MODELS", "DEMO_MODEL", "LoadedModel", "ModelLoadError", "load_model", "resolve"]


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what to do next."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: nn.Module
    tokenizer: Any
    placement: Placement


def allowed_models() -> tuple[str, ...] | None:
    """The operator's allow-list (None: any model may be loaded)."""
    names = tuple(m.strip() for m in os.environ.get(ALLOWED_MODELS_ENV, "").split(",") if m.strip())
    return names or None


def _not_available(model_id: str) -> ModelLoadError:
    """One message for every string that is not a model, whether or not a server path by that name exists."""
    shown = model_id if len(model_id) <= 80 else model_id[:80] + "…"
    return ModelLoadError(
        f"{shown!r} is not available: not a model here (no model folder or hub id by that name); pass a bundled "
        f"name ({', '.join(BUNDLED_MODELS)}), a model folder on this server, or a hub id such as org/name"
    )


def _model_folder(model_id: str) -> Path | None:
    """The resolved folder when `model_id` names a local folder holding a config.json (one path per folder)."""
    try:
        path = Path(model_id).expanduser()
        return path.resolve() if (path / "config.json").is_file() else None
    except (OSError, ValueError, RuntimeError):  # name too long, NUL byte, unknown ~user
        return None


def _locate(model_id: str) -> str | None:
    """The folder or hub id to load for a stripped id; None when it is no model at all."""
    if model_id in BUNDLED_MODELS:
        return str(BUNDLED_MODELS[model_id])
    folder = _model_folder(model_id)
    if folder is not None:
        return str(folder)
    return model_id if HUB_ID.fullmatch(model_id) and ".." not in model_id and "--" not in model_id else None


def resolve(model_id: str) -> str:
    """The folder or hub id to load for `model_id`; raises ModelLoadError for what cannot be loaded.

    A path that is not a model folder, missing or not, gets the same "not available" message: a visitor
    learns nothing about which server paths exist.
    """
    model_id = model_id.strip()
    if not model_id:
        raise ModelLoadError("no model given: pass a bundled name, a local folder or a hub id")
    source = _locate(model_id) if len(model_id) <= MAX_MODEL_ID_CHARS else None
    allowed = allowed_models()
    if allowed is not None and model_id not in allowed and (source is None or source not in map(_locate, allowed)):
        shown = model_id if len(model_id) <= 80 else model_id[:80] + "…"
        raise ModelLoadError(f"model {shown!r} is not allowed here; this deployment offers: {', '.join(allowed)}")
    if source is None:
        raise _not_available(model_id)
    return source


def bundled_vocabulary_size(name: str) -> int | None:
    """The embedding size of a bundled model, from its config (no weights loaded); None for any other name."""
    folder = BUNDLED_MODELS.get(name)
    if folder is None:
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    size = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    return size if isinstance(size, int) else None


def model_key(model_id: str) -> str:
    """One name per model, for caches and traces: a bundled name as is, a folder's resolved path, a hub id.

    Six spellings of one folder (./m, m/, /abs/m, ~/m, ...) once loaded six copies. Raises like resolve.
    """
    source = resolve(model_id)
    return model_id.strip() if model_id.strip() in BUNDLED_MODELS else source


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub? Fails fast where DNS or the network is missing."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_config(source: str, local_only: bool, trust_remote_code: bool, revision: str | None = None) -> Any:
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code,
                                          **_revision(revision))  # fmt: skip
    except OSError as error:
        if local_only and not Path(source).exists():
            raise ModelLoadError(
                f"cannot reach the Hugging Face hub to fetch {source!r}, and it is not in the local cache: "
                "connect to the network, or download it elsewhere and pass its local folder"
            ) from error
        raise ModelLoadError(f"cannot load {source!r}: {str(error).splitlines()[0]}") from error
    except ValueError as error:
        raise ModelLoadError(
            f"{source!r}: {str(error).splitlines()[0]} (a newer transformers may support it; custom code needs "
            "trust_remote_code, which the operator must turn on)"
        ) from error


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # --dtype: weights


def _revision(revision: str | None) -> dict[str, str]:
    """from_pretrained's revision argument where one is asked for (a hub branch, tag or commit)."""
    return {} if revision is None else {"revision": revision}


def _model_class(config: Any, name: str) -> type:
    """The Auto class that builds this config as a text model; a clear error for configs it cannot build
    (vision/audio wrappers such as qwen3_vl_moe whose checkpoints have no text-only class in transformers)."""
    seq2seq = getattr(config, "is_encoder_decoder", False)
    auto, mapping = (
        (AutoModelForSeq2SeqLM, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING)
        if seq2seq
        else (AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING)
    )
    if type(config) not in mapping and not getattr(config, "auto_map", None):
        raise ModelLoadError(
            f"{name} ({config.model_type}) has no text-model class in transformers ({auto.__name__}): it is a "
            "vision, audio or other non-text-generation model; the explorer traces text models"
        )
    return auto


def check_is_moe(config: Any, name: str, trust_remote_code: bool = False) -> None:
    """Build the model on the meta device (no memory, no weights) and look for routers before loading."""
    with torch.device("meta"):
        skeleton = _model_class(config, name).from_config(config, trust_remote_code=trust_remote_code)
    try:
        find_moe_blocks(skeleton, config.model_type)
    except NoRoutersError:
        raise ModelLoadError(f"{name} is a dense model: no routers found") from None


def weight_bars_on_a_terminal_only() -> None:
    """transformers' weight-loading and download bars only where stderr is a terminal: piped or captured (a server
    log, CI, a script's 2>), they wrote carriage-return lines into it. Every command and the app call this."""
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()


def load_model(
    model_id: str = DEMO_MODEL,
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    revision: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """Load model and tokenizer, ready to trace. `progress(stage, fraction)` is told as it goes. `revision`: a
    hub branch, tag or commit (OLMoE publishes checkpoints as revisions); `dtype` overrides the device's
    (a key of DTYPES: float32 against bfloat16 is one of the comparisons users ask for)."""
    report = progress or (lambda _stage, _fraction: None)
    report(f"finding {model_id}", 0.0)
    source = resolve(model_id)
    local_only = Path(source).exists() or not hub_reachable()
    if revision is not None and Path(source).exists():
        raise ModelLoadError(f"{model_id} is a local folder: a revision names a version of a hub model")
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    report("reading the config", 0.1)
    config = _load_config(source, local_only, trust_remote_code, revision)
    check_is_moe(config, model_id, trust_remote_code)
    report("loading the tokenizer", 0.2)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, local_files_only=local_only, trust_remote_code=trust_remote_code, **_revision(revision)
        )
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {model_id}: {str(error).splitlines()[0]}") from error
    placement = choose_placement(device)
    if dtype is not None:
        placement = replace(placement, dtype=DTYPES[dtype])
    report(f"loading the weights onto {placement.device} ({str(placement.dtype).removeprefix('torch.')})", 0.3)
    try:
        model, info = _model_class(config, model_id).from_pretrained(
            source,
            config=config,
            local_files_only=local_only,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **_revision(revision),
            **placement.from_pretrained_kwargs(),
        )
    except Exception as error:  # safetensors, torch and OS errors all mean a broken checkpoint here
        raise ModelLoadError(
            f"the checkpoint of {model_id} is corrupt or incomplete: {str(error).splitlines()[0]}"
        ) from error
    missing = [key for key in info.get("missing_keys", []) if key]
    if missing:
        raise ModelLoadError(
            f"the checkpoint of {model_id} is incomplete: {len(missing)} weights missing (e.g. {missing[0]})"
        )
    report("ready", 1.0)
    return LoadedModel(model_id, model.eval(), tokenizer, placement)
