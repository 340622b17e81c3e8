"""Screenshot of a built llnm3d site in headless Chromium (the README's viewer figure).

    python examples/site_screenshot.py SITE_DIR OUT.png [--hash VIEW_STATE]

Serves SITE_DIR on a free local port, opens it in Debian's Chromium (/usr/bin/chromium, software
WebGL) through Playwright, waits for the first frame and saves the page as a PNG.
"""

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from llnm3d.site import serving

ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
        "--use-gl=angle", "--use-angle=swiftshader"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hash", default="", help="view state (the page's URL hash)")
    args = parser.parse_args()
    with serving(args.site) as url:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(url + "index.html" + (f"#{args.hash.lstrip('#')}" if args.hash else ""))
            page.wait_for_function("window.llnm3d && window.llnm3d.ready", timeout=60_000)
            page.evaluate("window.llnm3d.ready")
            page.screenshot(path=str(args.out))
            browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
