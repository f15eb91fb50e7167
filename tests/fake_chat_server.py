"""A local stand-in for an OpenAI-compatible chat endpoint, for testing the LLM judge offline.

    with FakeChatServer() as server:                       # http://127.0.0.1:<free port>/v1
        spec = LLMJudgeSpec(base_url=server.base_url, model="fake", ...)
        ...  server.requests   (each: path, headers, body as parsed JSON)
        server.fail_next(503, 503)                         # the next two requests get these statuses
        server.mode = "garbage"                            # how later requests are answered

Answers (``POST .../chat/completions``): the object list is read off the last user message by a
trivial rule: take the text between <description> and </description> (the whole message if the
tags are missing), split it at commas, periods, semicolons and the word "and", drop a leading
"there is/are" and article, and keep the non-empty rest ("There is a red circle and a blue
star." -> ["red circle", "blue star"]). Modes:
    "ok"          content is that list as JSON
    "chatty"      the list wrapped in prose and a ```json fence
    "garbage"     content with no JSON list in it
    "not_json"    HTTP 200 with an HTML body
    "no_choices"  HTTP 200 with JSON that is not a chat completion
    "unauthorized" HTTP 401 whose body echoes the Authorization header it received (a careless
                  server; the judge must scrub the key from its error anyway)
The server binds 127.0.0.1 only and records every request, Authorization header included.
"""
from __future__ import annotations

import json
import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SPLIT = re.compile(r"[,.;]|\band\b", re.IGNORECASE)
_LEAD = re.compile(r"^(?:there\s+(?:is|are)\s+)?(?:(?:an|a|the|some)\b)?\s*", re.IGNORECASE)


def objects_by_rule(message: str) -> list[str]:
    """The fake model's object list for a user message (see the module docstring)."""
    match = re.search(r"<description>(.*?)</description>", message, re.DOTALL)
    text = match.group(1) if match else message
    objects = []
    for chunk in _SPLIT.split(text):
        chunk = _LEAD.sub("", " ".join(chunk.split())).lower()
        if chunk:
            objects.append(chunk)
    return objects


class FakeChatServer:
    """Threaded HTTP server speaking the chat-completions protocol; see the module docstring."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[dict[str, Any]] = []
        self._failures: deque[int] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status = server._failures.popleft() if server._failures else None
                    mode = server.mode
                if status is not None:
                    return self._send(status, {"error": {"message": "injected failure"}})
                if not self.path.endswith("/chat/completions") or not isinstance(body, dict):
                    return self._send(404, {"error": {"message": "not found"}})
                if mode == "unauthorized":
                    echoed = self.headers.get("Authorization")
                    return self._send(401, {"error": {"message": f"bad credentials: {echoed}"}})
                if mode == "not_json":
                    return self._send(200, "<html><body>Bad gateway</body></html>", content_type="text/html")
                if mode == "no_choices":
                    return self._send(200, {"id": "x", "object": "chat.completion"})
                user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
                objects = objects_by_rule(user[-1] if user else "")
                content = {
                    "ok": json.dumps(objects),
                    "chatty": "Sure! The objects are:\n```json\n" + json.dumps(objects) + "\n```\nHope this helps [1].",
                    "garbage": "I am sorry, I cannot see any image here.",
                }[mode]
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                })

            def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses, one each, in order."""
        with self._lock:
            self._failures.extend(statuses)

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
