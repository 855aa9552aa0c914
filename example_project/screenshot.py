"""Take a screenshot of the running example, as the README shows it.

With ``make demo`` serving on 127.0.0.1:8000, from the repository root::

    python example_project/screenshot.py docs/search-page.png

It needs the ``playwright`` package (not its browsers: it drives the system's
Chromium, Debian's ``chromium`` package, at ``/usr/bin/chromium`` by default).
The end-to-end tests launch Chromium through :func:`launch` too.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 900}


def chromium_path() -> str | None:
    """The Chromium binary to drive, or None when there is none."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright: Any, executable: str) -> Any:
    """A headless Chromium, started with flags that keep it off the network."""
    return playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="Where to write the PNG, e.g. docs/search-page.png.")
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--query", default="compress a file")
    parser.add_argument("--results", type=int, default=6)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        parser.error("Chromium was not found; install it (apt-get install chromium).")
    with sync_playwright() as playwright:
        browser = launch(playwright, executable)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(args.url)
        page.get_by_label("Search the documentation").fill(args.query)
        page.get_by_label("Number of results").fill(str(args.results))
        page.get_by_role("button", name="Search").click()
        page.wait_for_selector("ol.hits")
        page.screenshot(path=args.output, full_page=True)
        browser.close()
    print(f"Saved {args.output}")


if __name__ == "__main__":
    main()
