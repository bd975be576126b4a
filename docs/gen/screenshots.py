"""Look at the built site as a reader would (`make docs-shots`): serve build/site on loopback, open pages in
headless Chromium (Debian's, as the page's browser test does) and write a screenshot of each to build/site-shots/.

A request that would leave loopback is blocked and is an error (the site must read offline: no CDN fonts or
scripts), as is one that fails or answers an HTTP error (a missing page, a broken asset).

  python docs/gen/screenshots.py [PAGE ...]     (PAGE: a site path such as how-to/python/; default: PAGES)
"""
from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
SITE, OUT = ROOT / "build" / "site", ROOT / "build" / "site-shots"
# The home page, the tutorial, a how-to, the generated API and CLI references, and the architecture picture.
PAGES = ["", "tutorial/", "how-to/change-model/", "reference/python-api/", "reference/cli/",
         "reference/signatures/", "explanation/architecture/"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def browser() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    raise SystemExit("error: no Chromium on PATH; run `make browser` (Debian's chromium package)")


def main(pages: list[str]) -> int:
    from playwright.sync_api import Route, sync_playwright

    if not (SITE / "index.html").is_file():
        raise SystemExit(f"error: {SITE} has no site; run `make docs` first")
    handler = functools.partial(Quiet, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    OUT.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    try:
        with sync_playwright() as driver:
            chromium = driver.chromium.launch(executable_path=browser())
            page = chromium.new_page(viewport={"width": 1280, "height": 900})

            def only_loopback(route: Route) -> None:
                if urlsplit(route.request.url).hostname == "127.0.0.1":
                    route.continue_()
                    return
                problems.append(f"would leave loopback: {route.request.url}")
                route.abort()

            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            page.route("**/*", only_loopback)
            for path in (p.lstrip("/") for p in pages):
                page.goto(base + path)
                page.wait_for_load_state("networkidle")
                shot = OUT / f"{path.strip('/').replace('/', '-') or 'home'}.png"
                page.screenshot(path=str(shot))
                print(f"{shot.relative_to(ROOT)}: {page.title()}")
            chromium.close()
    finally:
        server.shutdown()
        server.server_close()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or PAGES))
