"""A small OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks/llm_fanout.py.

asyncio streams, HTTP/1.1 keep-alive, no framework. What it answers is scripted per model name:
`server.script("m", fn)` where `fn(body) -> dict` returns a reply spec, or `server.queue("m", [spec, ...])`
to answer the next requests in turn (the last spec repeats). A reply spec may hold:

    content      answer text (default: "echo: " + the last user message)
    tool_calls   [(name, arguments dict), ...] instead of text
    status       an HTTP error status (429, 500, ...) with `error` text and `headers` (e.g. Retry-After)
    delay        seconds to wait before answering (default: the server's `delay`)
    usage        (prompt_tokens, completion_tokens) (default: word counts)
    finish       the finish reason sent (default "stop" / "tool_calls"; e.g. "length")
    headers      also sent with a successful answer (e.g. x-ratelimit-*)
    broken       a streamed answer that is not whole, after its first `after` chunks (default 2):
                 "truncate" (the body ends cleanly: no finish reason, no [DONE]), "corrupt" (a chunk
                 that is not JSON), "stall" (no byte for `stall` seconds, then the rest), "drop"
                 (the connection closes)

A quota (`OpenAIServer(rpm=120)` or `--rpm 120`; `period=` for other than a minute) works as providers' do: a bucket of `rpm` requests,
full at the start and refilling continuously; a request finding it empty gets a 429 whose
Retry-After is the real wait; every answer carries `x-ratelimit-{limit,remaining,reset}-requests`.
`log` keeps (arrival time, status, prompt + completion tokens, the last user message) of every chat
request (`GET /stats?log=1`).

Requests with "stream": true are answered as server-sent events, several chunks per answer,
with a usage chunk when `stream_options.include_usage` is set. The server counts requests in
flight (`max_in_flight`) and keeps every request body (`requests`) unless `keep=False`.

In a thread of the test process: `with OpenAIServer() as srv: srv.url`. In its own process (the
benchmarks, tests that time arrivals): `python openai_server.py --delay 0.1 [--rpm 120] [--usage 30,200]`
prints the URL on its first line; GET /stats returns the counters as JSON (`?log=1`: and the log) and
POST /reset zeroes them (and fills the quota's bucket).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

Spec = dict[str, Any]


class OpenAIServer:
    """See the module docstring. `url` ends with /v1 (what an OpenAI client takes as base_url)."""

    def __init__(self, delay: float = 0.0, keep: bool = True, rpm: int | None = None, period: float = 60.0):
        self.delay = delay
        self.keep = keep
        self.rpm = rpm                      # the quota: `rpm` requests per `period` seconds (None: no quota)
        self.period = period
        self.level = float(rpm or 0)        # the quota's bucket: requests left now
        self.level_at = time.monotonic()
        self.log: list[tuple[float, int, int, str]] = []
        self.scripts: dict[str, Callable[[Spec], Spec]] = {}
        self.requests: list[Spec] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.count = 0
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._id = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ scripting
    def script(self, model: str, fn: Callable[[Spec], Spec]) -> None:
        """Answer requests for `model` with `fn(request body) -> reply spec`."""
        self.scripts[model] = fn

    def queue(self, model: str, specs: list[Spec]) -> None:
        """Answer the next requests for `model` with these specs in turn; the last one repeats."""
        left = list(specs)

        def next_spec(body: Spec) -> Spec:
            return left.pop(0) if len(left) > 1 else left[0]
        self.scripts[model] = next_spec

    def reset(self, scripts: bool = True) -> None:
        self.requests.clear()
        if scripts:
            self.scripts.clear()
        self.log.clear()
        self.in_flight = self.max_in_flight = self.count = 0
        self.level, self.level_at = float(self.rpm or 0), time.monotonic()

    def _quota(self) -> tuple[bool, dict[str, str]]:
        """Take one request from the bucket: (admitted, rate-limit headers)."""
        if not self.rpm:
            return True, {}
        now = time.monotonic()
        rate = self.rpm / self.period
        self.level = min(float(self.rpm), self.level + (now - self.level_at) * rate)
        self.level_at = now
        ok = self.level >= 1
        if ok:
            self.level -= 1
        headers = {"x-ratelimit-limit-requests": str(self.rpm),
                   "x-ratelimit-remaining-requests": str(int(self.level)),
                   "x-ratelimit-reset-requests": f"{(self.rpm - self.level) / rate:.3f}s"}
        if not ok:
            headers["retry-after"] = f"{(1 - self.level) / rate:.3f}"
        return ok, headers

    # ------------------------------------------------------------------ lifecycle
    async def start(self, port: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start_thread(self) -> "OpenAIServer":
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            pending = asyncio.all_tasks(loop)   # open keep-alive connections: end them, not leave them pending
            for t in pending:
                t.cancel()
            if pending:
                async def drain() -> None:   # gather() needs the loop running: it is not this thread's current loop
                    await asyncio.gather(*pending, return_exceptions=True)
                loop.run_until_complete(drain())
            loop.close()
        self._thread = threading.Thread(target=main, name="openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self.loop is not None and self._thread is not None:
            def halt() -> None:
                assert self._server is not None
                self._server.close()
                self.loop.stop()  # type: ignore[union-attr]
            self.loop.call_soon_threadsafe(halt)
            self._thread.join(5)

    def __enter__(self) -> "OpenAIServer":
        return self.start_thread()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                n = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(n) if n else b""
                close = headers.get("connection", "").lower() == "close"
                await self._route(method, path, raw, writer)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)

    async def _route(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> None:
        if "/stats" in path:
            stats: Spec = {"max_in_flight": self.max_in_flight, "count": self.count}
            if path.endswith("?log=1"):
                stats["log"] = self.log
            self._send(writer, 200, stats)
        elif path.endswith("/reset"):
            self.reset(scripts=False)
            self._send(writer, 200, {})
        elif path.endswith("/models"):
            self._send(writer, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.scripts]})
        elif method == "POST" and path.endswith("/chat/completions"):
            self.in_flight += 1
            self.count += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self._chat(json.loads(raw or b"{}"), writer)
            finally:
                self.in_flight -= 1
        else:
            self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        await writer.drain()

    async def _chat(self, body: Spec, writer: asyncio.StreamWriter) -> None:
        if self.keep:
            self.requests.append(body)
        model = body.get("model", "")
        arrived = time.monotonic()
        admitted, quota = self._quota()
        if not admitted:
            self.log.append((arrived, 429, 0, _last_user(body)[:80]))
            self._send(writer, 429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                               "code": "rate_limit_exceeded"}}, quota)
            return
        fn = self.scripts.get(model) or self.scripts.get("*")
        spec = fn(body) if fn is not None else _default_spec(body)
        delay = spec.get("delay", self.delay)
        if delay:
            await asyncio.sleep(delay)
        if spec.get("status"):
            status = int(spec["status"])
            self.log.append((arrived, status, 0, _last_user(body)[:80]))
            self._send(writer, status, {"error": {"message": spec.get("error", f"error {status}"),
                                                  "type": "server_error" if status >= 500 else "rate_limit_error",
                                                  "code": spec.get("code")}}, {**quota, **spec.get("headers", {})})
            return
        self._id += 1
        rid = f"chatcmpl-{self._id}"
        calls = spec.get("tool_calls")
        content = None if calls else spec.get("content", "echo: " + _last_user(body))
        usage = spec.get("usage") or (_words(body), len((content or json.dumps(calls)).split()))
        usage_d = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
        tool_calls = [{"id": f"call_{self._id}_{k}", "type": "function",
                       "function": {"name": name, "arguments": json.dumps(args)}}
                      for k, (name, args) in enumerate(calls or ())]
        created = int(time.time())
        self.log.append((arrived, 200, usage[0] + usage[1], _last_user(body)[:80]))
        finish = spec.get("finish", "tool_calls" if tool_calls else "stop")
        headers = {**quota, **spec.get("headers", {})}
        if not body.get("stream"):
            msg: Spec = {"role": "assistant", "content": content}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            answer = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                      "choices": [{"index": 0, "message": msg, "finish_reason": finish}], "usage": usage_d}
            if spec.get("broken") == "drop":      # half the body, then the connection closes
                raw = json.dumps(answer).encode()
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(raw)}"
                             f"\r\n\r\n".encode() + raw[:len(raw) // 2])
                await writer.drain()
                writer.transport.abort()
                return
            self._send(writer, 200, answer, headers)
            return
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                     f"{extra}\r\n".encode())
        broken, after, sent = spec.get("broken"), spec.get("after", 2), [0]

        def chunk(delta: Spec, finish: str | None = None, usage: Spec | None = None) -> None:
            d: Spec = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                d["usage"] = usage
            data = f"data: {json.dumps(d)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            sent[0] += 1

        async def fault() -> bool:
            """The scripted break, once `after` chunks are out: True when the answer ends here."""
            if not broken or sent[0] != after:
                return False
            await writer.drain()
            if broken == "truncate":
                writer.write(b"0\r\n\r\n")
                return True
            if broken == "drop":
                writer.transport.abort()
                return True
            if broken == "corrupt":
                data = b'data: {"id": "chatcmpl-x", "choices": [{"delta": {"content": "oops"\n\n'
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                sent[0] += 1
            if broken == "stall":
                await asyncio.sleep(spec.get("stall", 30.0))
            return False

        chunk({"role": "assistant", "content": ""})
        if await fault():
            return
        if tool_calls:
            for k, tc in enumerate(tool_calls):
                chunk({"tool_calls": [{"index": k, **tc}]})
                if await fault():
                    return
        else:
            words = (content or "").split(" ")
            step = max(1, len(words) // 8)
            for k in range(0, len(words), step):
                piece = " ".join(words[k:k + step])
                chunk({"content": piece if k == 0 else " " + piece})
                await writer.drain()
                if await fault():
                    return
                if spec.get("chunk_delay"):
                    await asyncio.sleep(spec["chunk_delay"])
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk({}, usage=usage_d)
        done = b"data: [DONE]\n\n"
        writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _last_user(body: Spec) -> str:
    for m in reversed(body.get("messages") or ()):
        if m.get("role") == "user":
            return _text(m.get("content"))[:200]
    return ""


def _words(body: Spec) -> int:
    return sum(len(_text(m.get("content")).split()) for m in body.get("messages") or ()) or 1


def _default_spec(body: Spec) -> Spec:
    """Unscripted: call the output tool with a minimal valid argument object when there is one, else echo."""
    for tool in body.get("tools") or ():
        fn = tool.get("function", {})
        if fn.get("name") == "final_result":
            return {"tool_calls": [("final_result", _fill(fn.get("parameters") or {}))]}
    return {}


def _fill(schema: Spec) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: _fill(v) for k, v in (schema.get("properties") or {}).items() if k in schema.get("required", ())}
    return {"string": "echo", "integer": 1, "number": 1.0, "boolean": True, "array": []}.get(kind, None)


def _main() -> None:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--rpm", type=int, default=None, help="a quota of this many requests a minute (a token bucket)")
    p.add_argument("--usage", default=None, help="PROMPT,COMPLETION tokens every answer reports (default: word counts)")
    a = p.parse_args()

    async def serve() -> None:
        srv = OpenAIServer(delay=a.delay, keep=False, rpm=a.rpm)
        if a.usage:
            usage = tuple(int(x) for x in a.usage.split(","))
            srv.script("*", lambda body: {**_default_spec(body), "usage": usage})
        await srv.start(a.port)
        print(srv.url, flush=True)
        await asyncio.Event().wait()
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    _main()
