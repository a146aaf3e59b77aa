"""A local OpenAI-compatible chat-completions server for the expansion tests (no network)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class ChatHandler(BaseHTTPRequestHandler):
    """Answers every chat completion with `answer` (a JSON list in prose) and records the requests."""

    requests: list[dict] = []
    answer = '["orb", "round disc", "ring"]'

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        content = f"Sure: {ChatHandler.answer}"
        payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def serve_chat() -> tuple[HTTPServer, str]:
    """Starts the server on a free localhost port; returns it and its base URL (".../v1")."""
    server = HTTPServer(("127.0.0.1", 0), ChatHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"
