"""The corpus page: a corpus traced offline (python -m moe_core trace-corpus), drawn from its summary only.

The operator names one folder (`-- --corpus-dir DIR`); every folder under it that holds a manifest and a
summary is offered by name. A visitor picks a name (from the sidebar or a link's `corpus=`), never a path, and
the page reads only DIR/<name>/summary.npz and its manifest: the raw routing of the corpus never loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from app.charts.capacity import drop_curve_chart
from app.charts.load import coactivation_chart, domain_chart, load_chart
from app.charts.matrix import flow_pair_chart
from app.components import explainer, set_chart_settings, show_chart, show_table
from app.export import ChartStamp
from app.operator import operator_options
from app.safe_text import md_code, md_text, neutral_bidi, one_line
from app.session import keep_settings
from moe_core.analyses import corpus as frames
from moe_core.corpus.shards import MANIFEST, TOTAL_SUMMARY, corpus_file, load_manifest
from moe_core.corpus.summary import POLICY, CorpusSummary, load_summary

CORPUS_KEY = "corpus"  # session state and URL parameter: the name of the corpus shown ("" for none)
NONE = ""
TOP_TOKENS = 8  # per expert in the token table

NOTICE = (
    "Over a whole corpus the patterns of one text become counts: experts that take a domain, token ids that keep "
    "their expert, and drops that still pile up at the end of each document."
)  # the one sentence of what to notice
EXPLAINER = """
A corpus traced offline, shown from its summary: counts summed over every document, so the page never loads the
corpus's routing itself. **Expert load** counts each expert's first-choice tokens (or all top-k slots) per layer
against an even split. **Domains** shows each expert's share of a domain's slots (white: the even 1/E).
**Token ids** lists the ids each expert takes most often as first choice, and how much of each id's traffic
that is: OpenMoE's context-independent routing shows as shares near 100%. **Co-activation** and **layer flow**
are the expert × expert counts of the expert-load and layer-flow views, over the whole corpus. **Drops by
position** simulates capacity on every document on its own (GShard/OpenMoE order, one group a document) at the
capacity factor the corpus was traced with.
"""


def corpus_root() -> Path | None:
    folder = operator_options().corpus_dir
    return Path(folder).expanduser().resolve() if folder else None


def summarized_corpora(root: Path) -> dict[str, Path]:
    """Name -> folder of every summarized corpus directly under `root` (links that leave it are not offered)."""
    if not root.is_dir():
        return {}
    found = {}
    for child in sorted(root.iterdir()):
        folder = child.resolve()
        if folder.parent == root and (folder / MANIFEST).is_file() and (folder / TOTAL_SUMMARY).is_file():
            found[child.name] = folder
    return found


@st.cache_data(max_entries=8, show_spinner=False)
def _read(folder: str, stamp: float) -> tuple[CorpusSummary, dict[str, Any]]:
    """The summary and manifest, read once per version of the summary file (`stamp`: its mtime)."""
    path = Path(folder)
    return load_summary(corpus_file(path, TOTAL_SUMMARY)), load_manifest(path)


@st.cache_resource(max_entries=4, show_spinner=False)
def _tokenizer(model: str) -> Any:
    """The model's tokenizer from local files only (None where it is not here: ids are shown instead)."""
    from transformers import AutoTokenizer

    from moe_core.models import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve(model), local_files_only=True)
    except Exception:  # any failure just means no decoded text
        return None


def _token_texts(model: str, ids: list[int]) -> list[str]:
    tokenizer = _tokenizer(model)
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [neutral_bidi(one_line(repr(tokenizer.decode([i]))[1:-1])) for i in ids]


def _choose(sidebar: DeltaGenerator, names: list[str]) -> str:
    """The corpus picker, seeded once from the link's `corpus=` (a name not offered is ignored)."""
    if CORPUS_KEY not in st.session_state:
        wanted = st.query_params.get(CORPUS_KEY, NONE)
        st.session_state[CORPUS_KEY] = wanted if wanted in names else NONE
    sidebar.selectbox(
        "…or view a traced corpus",
        [NONE, *names],
        key=CORPUS_KEY,
        format_func=lambda name: name or "— none —",
        help="Corpora the operator traced offline (python -m moe_core trace-corpus), shown from their summaries.",
    )
    return st.session_state[CORPUS_KEY]


def corpus_page(header: DeltaGenerator) -> bool:
    """Offer the operator's corpora in the sidebar; when one is chosen, draw its page and return True (the caller
    then draws nothing else)."""
    root = corpus_root()
    names = list(summarized_corpora(root)) if root is not None else []
    if not names or not (name := _choose(st.sidebar, names)):
        return False
    folder = summarized_corpora(root)[name]
    try:
        summary, manifest = _read(str(folder), (folder / TOTAL_SUMMARY).stat().st_mtime)
    except (OSError, ValueError) as error:
        st.error(f"Cannot read the corpus {md_code(name)}: {md_text(error)}")
        return True
    st.query_params.from_dict({CORPUS_KEY: name})
    keep_settings()
    model = manifest["model"]
    header.caption(
        f"Corpus **{md_text(name)}** · {md_text(model['name'])} · {md_text(model['architecture'])} · "
        f"{summary.num_experts} experts, top-{summary.top_k} · {summary.documents:,} documents · "
        f"{summary.tokens:,} tokens · {len(manifest['shards'])} shards"
        + (f" · {summary.truncated} cut to the context" if summary.truncated else "")
    )
    draw(summary, model["name"])
    return True


def _layer(summary: CorpusSummary) -> int:
    layers = list(summary.moe_layers)
    if st.session_state.get("corpus_layer") not in layers:
        st.session_state.corpus_layer = layers[0]
    st.sidebar.select_slider("Corpus layer", options=layers, key="corpus_layer")
    return layers.index(st.session_state.corpus_layer)


def draw(summary: CorpusSummary, model: str) -> None:
    explainer(NOTICE, EXPLAINER)
    row = _layer(summary)
    layer = summary.moe_layers[row]
    set_chart_settings(ChartStamp(model, layer, summary.capacity_factor, POLICY), False)
    load, domains, tokens, together, flow, drops = st.tabs(
        ["Expert load", "Domains", "Token ids", "Co-activation", "Layer flow", "Drops by position"]
    )
    with load:
        count = st.radio("Count", ["top1", "topk"], horizontal=True, key="corpus_count",
                         format_func={"top1": "first choice", "topk": "all top-k slots"}.get)  # fmt: skip
        show_chart(load_chart(frames.load_frame(summary), count, summary.num_experts), "corpus-load")
        show_table(frames.balance_frame(summary), {"layer": "layer", "cv": "cv", "max_over_mean": "max / mean"},
                   decimals={"cv": 3, "max_over_mean": 3})  # fmt: skip
    with domains:
        _domains(summary, row, layer)
    with tokens:
        _tokens(summary, row, model)
    with together:
        show_chart(coactivation_chart(frames.coactivation_frame(summary, row), layer), "corpus-coactivation")
    with flow:
        _flow(summary, row)
    with drops:
        title = f"Drops by position at layer {layer}, capacity factor {summary.capacity_factor:g} (each document alone)"
        curve = frames.drop_curve(summary, row)
        show_chart(drop_curve_chart(curve, title), "corpus-drops")
        if len(curve) and curve["tokens"].iloc[-1] < curve["tokens"].iloc[0]:
            st.caption(f"The first bin holds {int(curve['tokens'].iloc[0]):,} tokens and the last "
                       f"{int(curve['tokens'].iloc[-1]):,}: documents differ in length, so the late bins come from "
                       "the longest documents alone.")  # fmt: skip


def _domains(summary: CorpusSummary, row: int, layer: int) -> None:
    if len(summary.domains) < 2:
        st.info("This corpus was traced without domains (trace-corpus --domain-field names the field that holds them).")
    show_chart(domain_chart(frames.domain_share_frame(summary, row), layer), "corpus-domains")


def _tokens(summary: CorpusSummary, row: int, model: str) -> None:
    specialization = frames.vocabulary_specialization(summary)
    value = float(specialization["specialization"].iloc[row])
    st.metric("Vocabulary specialization (ids seen 10+ times)", "—" if value != value else f"{value:.0%}",
              help="Mean share of an id's first choices that go to its most frequent expert; 1/E if routing ignored "
              "the id.")  # fmt: skip
    table = frames.top_tokens_frame(summary, row, TOP_TOKENS)
    table.insert(2, "token", _token_texts(model, table["token_id"].tolist()))
    labels = {"expert": "expert", "token_id": "id", "token": "token", "count": "first choices here",
              "occurrences": "occurrences", "share": "share of the id"}  # fmt: skip
    show_table(table, labels, percent=("share",))


def _flow(summary: CorpusSummary, row: int) -> None:
    if summary.num_layers < 2:
        st.info("This model has a single MoE layer: flow needs two.")
        return
    start = min(row, summary.num_layers - 2)
    source, target = summary.moe_layers[start], summary.moe_layers[start + 1]
    st.metric(f"Follow their group's path, layer {source} → {target}", f"{frames.followed(summary, start):.0%}")
    show_chart(flow_pair_chart(frames.transition_frame(summary, start), source, target), "corpus-flow")
