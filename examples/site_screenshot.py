"""Screenshot of a built llnm3d site in headless Chromium (the README's viewer figure).

    python examples/site_screenshot.py SITE_DIR OUT.png [--hash VIEW_STATE]

Serves SITE_DIR on a free local port, opens it in Debian's Chromium (/usr/bin/chromium, software
WebGL) through Playwright, waits for the first frame and saves the page as a PNG.
"""

import argparse
import functools
import http.server
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-background-networking", "--enable-unsafe-swiftshader",
        "--use-gl=angle", "--use-angle=swiftshader"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hash", default="", help="view state (the page's URL hash)")
    args = parser.parse_args()
    handler = functools.partial(QuietHandler, directory=str(args.site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
            page.goto(url + (f"#{args.hash.lstrip('#')}" if args.hash else ""))
            page.wait_for_function("window.llnm3d && window.llnm3d.ready", timeout=60_000)
            page.evaluate("window.llnm3d.ready")
            page.screenshot(path=str(args.out))
            browser.close()
        server.shutdown()
    print(args.out)


if __name__ == "__main__":
    main()
