"""llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) as a real
served teacher, and a small HTTP proxy in front of it that injects 429s, stalls and delay.

The server runs one request at a time (measured, 0.3.36); it is started with one thread and
a float32 KV cache so its numbers can be compared with transformers'.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.llama_cpp_check import llama_cpp

SERVED_NAME = "teacher"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    def __init__(
        self,
        gguf: Path,
        log: Path,
        *,
        api_key: str | None = None,
        port: int | None = None,
        n_ctx: int = 512,
    ) -> None:
        llama_cpp()  # skips with the build hint where llama-cpp-python is missing
        self.gguf, self.log, self.api_key = gguf, log, api_key
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> LlamaServer:
        args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf),
            "--model_alias", SERVED_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", "1",
            "--n_threads_batch", "1",
            "--type_k", "0",
            "--type_v", "0",
        ]  # fmt: skip
        if self.api_key:
            args += ["--api_key", self.api_key]
        self.proc = subprocess.Popen(
            args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.time() + timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama server exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/models", headers=headers, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"llama server not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class FaultProxy:
    """Forwards HTTP to ``upstream``; every ``fail_every``-th request answers 429 instead,
    every ``stall_every``-th waits ``stall_s`` first, and every request waits ``delay_s``."""

    def __init__(
        self,
        upstream: str,
        *,
        fail_every: int = 0,
        stall_every: int = 0,
        stall_s: float = 0.0,
        delay_s: float = 0.0,
    ) -> None:
        self.root = upstream.rstrip("/").removesuffix("/v1")
        self.fail_every, self.stall_every = fail_every, stall_every
        self.stall_s, self.delay_s = stall_s, delay_s
        self.injected = {"429": 0, "stall": 0}
        self.requests = 0
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proxy._forward(self, None)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                # A client that timed out during a stall has hung up: nothing to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proxy._forward(self, self.rfile.read(n))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _forward(self, h: http.server.BaseHTTPRequestHandler, body: bytes | None) -> None:
        import httpx

        with self._lock:
            n = next(self._count)
            self.requests += 1
        if self.fail_every and n % self.fail_every == 0:
            with self._lock:
                self.injected["429"] += 1
            h.send_response(429)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if self.stall_every and n % self.stall_every == 0:
            with self._lock:
                self.injected["stall"] += 1
            time.sleep(self.stall_s)
        if self.delay_s:
            time.sleep(self.delay_s)
        headers = {
            k: v for k, v in h.headers.items() if k.lower() in ("authorization", "content-type")
        }
        try:
            r = httpx.request(
                h.command, self.root + h.path, content=body, headers=headers, timeout=600
            )
        except httpx.HTTPError:
            h.send_response(502)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(r.status_code)
        h.send_header("Content-Type", r.headers.get("content-type", "application/json"))
        h.send_header("Content-Length", str(len(r.content)))
        h.end_headers()
        h.wfile.write(r.content)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_gguf(model_dir: str | Path, out: Path) -> Path:
    """The GGUF a test serves: float32, so the server's numbers carry no rounding of ours."""
    from distillq.core.export.gguf.write import write_gguf

    if not out.exists():
        write_gguf(Path(model_dir), out, "f32")
    return out
