"""Serving a built site over http on localhost (``llnm3d serve``; ES modules do not load from
``file://``)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Files of the site folder only: no directory listings, nothing outside the folder."""

    def send_head(self):
        """404 unless the request names a file, or a folder with an index.html, whose real
        path (symlinks followed) lies inside the site folder; else serve it as usual."""
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if not (path.is_file()
                and path.resolve().is_relative_to(Path(self.directory).resolve())):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()


class _QuietHandler(_SiteHandler):
    """Site files without a log line per request (tests and benchmarks serve quietly)."""

    def log_message(self, format: str, *args) -> None:
        pass


@contextlib.contextmanager
def serving(site_dir: str | Path, port: int = 0, verbose: bool = False) -> Iterator[str]:
    """Serve ``site_dir`` over http on localhost from a background thread (ES modules do not
    load from ``file://``); yield the base URL. Only files inside ``site_dir`` are served (no
    directory listings, no symlinks leading out). ``port=0`` picks a free port; ``verbose``
    logs each request to stderr. A busy or forbidden port raises OSError."""
    handler_class = _SiteHandler if verbose else _QuietHandler
    handler = functools.partial(handler_class, directory=str(site_dir))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://localhost:{server.server_address[1]}/"
        finally:
            server.shutdown()
            thread.join()
