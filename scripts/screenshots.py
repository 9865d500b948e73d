"""Regenerate the README's screenshots (docs/screenshots/*.png) from the running app in Debian's chromium.

python scripts/screenshots.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.loading import presets  # noqa: E402
from tests.e2e.browser import app_server, chromium, wait_for_charts  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1440, "height": 1500}
LAB_VIEWPORT = {"width": 1440, "height": 5200}  # the lab is long; Streamlit scrolls inside its main pane
LAB_SECTIONS = {  # (top, bottom) pixel rows of the lab screenshot cut into README images
    "capacity-lab-cost": (380, 2000),
    "capacity-lab-end": (2000, 3900),
}


def capacity_lab(browser, url: str) -> None:
    """The capacity view with the capacity-bound forward on, cut into its cost and drop-towards-the-end parts."""
    from PIL import Image

    page = browser.new_page(viewport=LAB_VIEWPORT)
    page.goto(f"{url}/?view=capacity&cf=0.75")
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


def main() -> None:
    texts = presets()
    mixed = "\n".join(texts[name] for name in ("Prose", "Python code", "Arithmetic"))
    shots = {
        "routing": f"view=routing&layer=1&text={quote(mixed)}",
        "gates": f"view=gates&token=6&text={quote(texts['Prose'])}",
        "load": f"view=load&text={quote(mixed)}",
        "capacity": "view=capacity&cf=0.75",
        "flow": f"view=flow&text={quote(mixed)}",
    }
    presenting = f"view=routing&present=1&text={quote(texts['Python code'])}"
    projector = {"presentation-1280": (presenting, {"width": 1280, "height": 720}),
                 "presentation-1920": (presenting, {"width": 1920, "height": 1080})}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    with app_server() as url, chromium() as browser:
        for name, (query, viewport) in {**{n: (q, VIEWPORT) for n, q in shots.items()}, **projector}.items():
            page = browser.new_page(viewport=viewport)
            page.goto(f"{url}/?{query}")
            wait_for_charts(page)
            time.sleep(1.0)  # let the last chart finish its transition
            page.screenshot(path=OUT / f"{name}.png")
            page.close()
            print(f"wrote {OUT / f'{name}.png'}")
        capacity_lab(browser, url)


if __name__ == "__main__":
    main()
