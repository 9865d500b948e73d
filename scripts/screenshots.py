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


def main() -> None:
    texts = presets()
    mixed = "\n".join(texts[name] for name in ("Prose", "Python code", "Arithmetic"))
    shots = {
        "routing": f"view=routing&layer=1&text={quote(mixed)}",
        "gates": f"view=gates&token=6&text={quote(texts['Prose'])}",
        "load": f"view=load&text={quote(mixed)}",
        "capacity": "view=capacity&cf=0.75",
        "flow": f"view=flow&text={quote(mixed)}",
        "presentation": f"view=routing&present=1&text={quote(texts['Python code'])}",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    with app_server() as url, chromium() as browser:
        for name, query in shots.items():
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"{url}/?{query}")
            wait_for_charts(page)
            time.sleep(1.0)  # let the last chart finish its transition
            page.screenshot(path=OUT / f"{name}.png")
            page.close()
            print(f"wrote {OUT / f'{name}.png'}")


if __name__ == "__main__":
    main()
