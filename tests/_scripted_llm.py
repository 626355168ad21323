"""A local OpenAI-compatible chat-completions server with scripted structured answers (127.0.0.1 only).

Each request is answered with the next scripted arguments as a call of the request's output tool
(the last answer repeats); every request body is kept in `.requests` so tests can read what the
model was told (e.g. the reason a refused answer was sent back with).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedServer:
    def __init__(self, answers: list[dict[str, Any]], usage: tuple[int, int] = (40, 20)):
        self.answers = list(answers)
        self.usage = usage
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    answer = server.answers[min(len(server.requests), len(server.answers)) - 1]
                tool = body["tools"][0]["function"]["name"]
                out = {"id": f"cmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                       "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                           "role": "assistant", "content": None,
                           "tool_calls": [{"id": f"call_{len(server.requests)}", "type": "function",
                                           "function": {"name": tool, "arguments": json.dumps(answer)}}]}}],
                       "usage": {"prompt_tokens": server.usage[0], "completion_tokens": server.usage[1],
                                 "total_tokens": sum(server.usage)}}
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def model(self) -> Any:
        """A pydantic-ai chat model that talks to this server."""
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai_compatible import OpenAICompatibleProvider
        return OpenAIChatModel("scripted", provider=OpenAICompatibleProvider(
            "scripted", base_url=self.base_url, api_key="test-key"))

    def told(self, n: int) -> str:
        """Everything the model was sent in request n (0-based), as one text."""
        return json.dumps(self.requests[n]["messages"], ensure_ascii=False)
