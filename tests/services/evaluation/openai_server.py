"""A tiny OpenAI-compatible ``/v1/completions`` server for tests, that can misbehave.

Each prompt's completion is ``"    return 1\\n# index {i}"`` for choice ``i``; ``fail`` holds
status codes to answer with first (e.g. ``[500, 429]``), once each.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OpenAIServer:
    def __init__(self):
        self.fail: list[int] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, **body})
                    code = server.fail.pop(0) if server.fail else 200
                if code != 200:
                    self._send(code, {"error": {"message": "try again", "type": "test"}})
                    return
                n = body.get("n", 1)
                self._send(200, {
                    "id": "cmpl-test", "object": "text_completion", "created": 0,
                    "model": body["model"], "choices": [
                        {"index": i, "text": f"    return 1\n# index {i}", "logprobs": None,
                         "finish_reason": "stop"} for i in range(n)]})

            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> OpenAIServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
