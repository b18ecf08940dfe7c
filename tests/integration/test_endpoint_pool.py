"""The HTTP pool of served teachers, against real local HTTP servers: replicas share the
requests, a dead one leaves the rotation and comes back, ordered results with many in flight,
and a server that stays down fails after a bounded number of tries."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import pytest

from distillq.core.teacher.endpoint import Pool
from distillq.errors import EndpointDown
from tests.llama_server import free_port


class JsonServer:
    """Answers every POST with ``{"n": <body's n>, "port": <its port>}`` after ``delay_s``."""

    def __init__(self, port: int = 0, delay_s: float = 0.0) -> None:
        self.hits = 0
        self.in_flight = self.peak = 0
        lock = threading.Lock()
        me = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    me.hits += 1
                    me.in_flight += 1
                    me.peak = max(me.peak, me.in_flight)
                time.sleep(delay_s)
                with lock:
                    me.in_flight -= 1
                out = json.dumps({"n": body["n"], "port": me.port}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_results_keep_input_order_with_many_in_flight_per_replica():
    a, b = JsonServer(delay_s=0.05), JsonServer(delay_s=0.05)
    try:
        with Pool([a.url, b.url], max_concurrent=3) as pool:
            got = list(pool.map_ordered(lambda n: pool.post("/x", {"n": n})["n"], range(60)))
        assert got == list(range(60))
        assert a.hits > 10 and b.hits > 10  # both replicas used
        assert a.peak <= 3 and b.peak <= 3 and max(a.peak, b.peak) >= 2  # bounded, overlapping
    finally:
        a.close()
        b.close()


def test_a_dead_replica_leaves_the_rotation_and_comes_back():
    live = JsonServer()
    dead_port = free_port()
    errors: list[str] = []
    try:
        with Pool(
            [live.url, f"http://127.0.0.1:{dead_port}/v1"], max_concurrent=2, on_error=errors.append
        ) as pool:
            assert [pool.post("/x", {"n": n})["n"] for n in range(30)] == list(range(30))
            assert 0 < pool.stats.by_status.get("connect", 0) < 10  # backed off, not hammered
            assert errors and str(dead_port) in errors[-1]
            revived = JsonServer(port=dead_port)
            try:
                time.sleep(11)  # past the longest back-off
                ports = {pool.post("/x", {"n": n})["port"] for n in range(30)}
                assert dead_port in ports  # back in rotation
            finally:
                revived.close()
    finally:
        live.close()


def test_a_server_that_stays_down_fails_after_bounded_tries():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with Pool([url], retries=4, retry_budget_s=30) as pool:
        started = time.monotonic()
        with pytest.raises(EndpointDown, match=r"failed 4 times.*teacher.retries"):
            pool.post("/completions", {"n": 1})
        assert time.monotonic() - started < 30
        assert pool.stats.retries == 4
