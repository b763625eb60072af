"""Stand-ins for the world outside the training process. Each runs as its own process so that
its work never competes for the benchmarked interpreter's GIL:

    python -m benchmarks.outside sink [--delay SECONDS]    # OTLP/HTTP receiver; prints its port
    python -m benchmarks.outside scrape URL [--every SECONDS]
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    """Reads an OTLP/HTTP export, waits ``server.delay`` seconds, answers 200 with an empty
    protobuf (a valid Export*ServiceResponse)."""

    protocol_version = "HTTP/1.1"  # keep-alive, like a collector

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.server.delay)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def sink(delay: float) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.daemon_threads = True
    server.delay = delay
    server.handle_error = lambda request, address: None  # a client that gave up waiting
    print(server.server_address[1], flush=True)
    server.serve_forever()


def scrape(url: str, every: float) -> None:
    while True:
        time.sleep(every)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
        except OSError:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sink").add_argument("--delay", type=float, default=0.0)
    scraper = commands.add_parser("scrape")
    scraper.add_argument("url")
    scraper.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    if args.command == "sink":
        sink(args.delay)
    else:
        scrape(args.url, args.every)


if __name__ == "__main__":
    main()
