"""A load-balancer member for dataplane tests: answers every GET with its own name.

Run inside a member namespace: ``python member_server.py <name> <port>``.
``/healthz`` answers 200 (the health monitor's path); ``/login`` sets the application cookie
``JSESSIONID`` (for APP_COOKIE persistence); every answer carries ``X-Member: <name>``.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("X-Member", name)
            self.send_header("Content-Length", str(len(body)))
            if self.path.startswith("/login"):
                self.send_header("Set-Cookie", f"JSESSIONID=s-{name}; Path=/")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer(("0.0.0.0", port), handler_for(name))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
