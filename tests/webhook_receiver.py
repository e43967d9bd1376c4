"""A webhook endpoint for tests: records what arrives; `/fail` always answers 500."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Receiver:
    base_url: str
    deliveries: list[Delivery] = field(default_factory=list)

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            receiver.deliveries.append(
                Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(500 if self.path.startswith("/fail") else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
