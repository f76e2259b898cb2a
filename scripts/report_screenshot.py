"""Screenshot of an `autoseg report` page in headless Chromium (the README's docs/images/report*.png).

    python scripts/report_screenshot.py RUN/report.html docs/images/report.png                 # top of the page
    python scripts/report_screenshot.py RUN/report.html docs/images/report_cases.png --section cases

Needs playwright (`pip install -e '.[browser]'`) and a Chromium: Debian's (`apt-get install chromium`),
found on PATH, or playwright's own (`python -m playwright install chromium`). The page is really
rendered: the script fails when a picture did not load.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the HTML file written by `autoseg report`")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--section", default=None, help="id of one section to capture (status, plan, training, "
                                                        "selection, validation, cases); default: the page's top")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument("--height", type=int, default=1300, help="viewport height (the top-of-page capture)")
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: pip install -e '.[browser]'", file=sys.stderr)
        return 1
    exe = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(args.report.resolve().as_uri(), wait_until="load")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
            if broken:
                print(f"{broken} picture(s) did not load in {args.report}", file=sys.stderr)
                return 1
            args.output.parent.mkdir(parents=True, exist_ok=True)
            if args.section:
                page.locator(f"#{args.section}").screenshot(path=str(args.output))
            else:
                page.screenshot(path=str(args.output))
        finally:
            browser.close()
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
