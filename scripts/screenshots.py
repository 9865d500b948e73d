"""Regenerate the README's screenshots (docs/screenshots/*.png) from the running app in Debian's chromium.

python scripts/screenshots.py                  # all of them
python scripts/screenshots.py --real-shapes    # only the 256-expert (DeepSeek-V3-shaped) ones
python scripts/screenshots.py --only=compare --only=capacity-lab   # only these
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.loading import presets  # noqa: E402
from tests.e2e.browser import app_server, chromium, wait_for_charts  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 1500}
PROJECTOR_SIZES = ((1280, 720), (1920, 1080))
LAB_VIEWPORT = {"width": 1440, "height": 6400}  # the lab is long; Streamlit scrolls inside its main pane
LAB_SECTIONS = {  # (top, bottom) pixel rows of the lab screenshot cut into README images
    "capacity-lab-cost": (380, 2640),
    "capacity-lab-end": (2640, 5300),  # equal-length windows, per text or batch, the cascade, the controls
}


def capacity_lab(browser, url: str) -> None:
    """The capacity view with the capacity-bound forward on, cut into its cost and drop-towards-the-end parts."""
    from PIL import Image

    page = browser.new_page(viewport=LAB_VIEWPORT)
    page.goto(f"{url}/?view=capacity&cf=0.75&layer=1")  # layer 1: the cascade differs from the static curve
    wait_for_charts(page)
    page.get_by_text("Run the model capacity-bound").click()
    time.sleep(1.0)
    wait_for_charts(page)
    time.sleep(2.0)
    whole = OUT / "capacity-lab-full.png"
    page.screenshot(path=whole)
    page.close()
    image = Image.open(whole)
    for name, (top, bottom) in LAB_SECTIONS.items():
        image.crop((0, top, image.width, bottom)).save(OUT / f"{name}.png")
        print(f"wrote {OUT / f'{name}.png'}")
    whole.unlink()


REAL_SHAPE_VIEWS = {  # README screenshots of a DeepSeek-V3-shaped model: view -> viewport height
    "routing": 1500,
    "load": 1500,
    "flow": 2600,  # the overview and every pair's small multiple
}


def deepseek_trace(path: Path, text: str) -> None:
    """A random-init model of DeepSeek-V3's config (256 experts in 8 groups, top-8, 58 MoE layers of 61) with a
    tiny hidden size, `text` routed through it, saved as Parquet: what the app shows at that shape."""
    from moe_core.capture.record import trace
    from moe_core.models import load_model
    from moe_core.proof.tiny_models import REAL_SHAPES, build_tiny_model
    from moe_core.traces.io import save_trace

    model = build_tiny_model("deepseek_v3", overrides={**REAL_SHAPES["deepseek_v3"], "max_position_embeddings": 4096})
    routing = trace(model, load_model().tokenizer, [text], name="DeepSeek-V3 shape, random init")
    save_trace(replace(routing, logits=None, probs=None), path)  # compact, as an engine dump: under the upload limit


def real_shapes(browser, url: str, text: str) -> None:
    """Token routing, expert load and layer flow of a 256-expert trace, opened through the upload box."""
    from app.view_registry import VIEWS
    from benchmarks.bench_real_shapes import VIEW_BUTTONS, drawn, upload

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deepseek-v3-shape.parquet"
        deepseek_trace(path, text)
        for view, height in REAL_SHAPE_VIEWS.items():
            page = browser.new_page(viewport={"width": VIEWPORT["width"], "height": height})
            page.goto(f"{url}/")
            wait_for_charts(page)
            upload(page, path)
            drawn(page)
            if view != VIEWS[0]:
                page.locator(VIEW_BUTTONS).nth(VIEWS.index(view)).click()
                page.wait_for_function(f"() => location.search.includes('view={view}')")
                drawn(page)
            time.sleep(1.0)
            page.screenshot(path=OUT / f"{view}-256.png")
            page.close()
            print(f"wrote {OUT / f'{view}-256.png'}")


def main() -> None:
    texts = presets()
    mixed = "\n".join(texts[name] for name in ("Prose", "Python code", "Arithmetic"))
    shots = {
        "routing": f"view=routing&layer=1&text={quote(mixed)}",
        "gates": f"view=gates&token=6&text={quote(texts['Prose'])}",
        "load": f"view=load&text={quote(mixed)}",
        "capacity": "view=capacity&cf=0.75",
        "flow": f"view=flow&text={quote(mixed)}",
        "compare": f"view=compare&layer=2&text={quote(texts['Long text (all domains)'])}",  # fp32 against bf16
        "training": f"view=training&layer=1&stext=2&step=400&text={quote(texts['Prose'])}",  # German, early on
    }
    presenting = f"view=routing&present=1&text={quote(texts['Python code'])}"
    projector = {"presentation-1280": (presenting, {"width": 1280, "height": 720}),
                 "presentation-1920": (presenting, {"width": 1920, "height": 1080})}  # fmt: skip
    for view, query in shots.items():  # every view at both projector sizes: docs/presentation.md
        for width, height in PROJECTOR_SIZES:
            projector[f"presentation/{view}-{width}"] = (f"{query}&present=1", {"width": width, "height": height})
    only_real_shapes = "--real-shapes" in sys.argv[1:]  # just the 256-expert shots
    only = [arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--only=")]  # e.g. --only=compare
    long_text = "\n".join([mixed, texts["Long text (all domains)"]])  # about 1,700 tokens: each expert has some
    (OUT / "presentation").mkdir(parents=True, exist_ok=True)
    with app_server() as url, chromium() as browser:
        if only_real_shapes:
            real_shapes(browser, url, long_text)
            return
        for name, (query, viewport) in {**{n: (q, VIEWPORT) for n, q in shots.items()}, **projector}.items():
            if only and name not in only:
                continue
            page = browser.new_page(viewport=viewport)
            page.goto(f"{url}/?{query}")
            wait_for_charts(page)
            time.sleep(1.0)  # let the last chart finish its transition
            page.screenshot(path=OUT / f"{name}.png")
            page.close()
            print(f"wrote {OUT / f'{name}.png'}")
        if not only or "capacity-lab" in only:
            capacity_lab(browser, url)
        if not only:
            real_shapes(browser, url, long_text)


if __name__ == "__main__":
    main()
