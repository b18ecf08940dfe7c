"""HTTP to teacher servers: several replicas, bounded concurrency, retries, ordered results.

One ``Pool`` per teacher task. Requests go to the replica with the fewest in flight among
those not cooling down; each replica has its own ``max_concurrent`` slots. A connection
error, timeout, 429 or 5xx retries with exponential backoff + full jitter, bounded by
``retries`` and ``retry_budget_s``, and takes that replica out of rotation for the backoff
(it comes back by itself). When every attempt is spent, ``EndpointDown`` fails the shard task
into the task retry path; shards already written stay written.

The API key is read from the environment by the caller and held here only: it is never in
the job spec, a task argument, a log line or an error message.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from distillq.errors import EndpointDown, EndpointError

T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 10.0


@dataclass
class PoolStats:
    """What a pool met, for the shard's stats and ``status``."""

    requests: int = 0
    retries: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    """Retried failures by kind: "429", "503", "timeout", "connect", ..."""
    last_error: str = ""
    """The last failure, as ``<url>: <what>`` (never carries the key)."""


@dataclass
class _Replica:
    url: str
    slots: threading.Semaphore
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0


class Pool:
    def __init__(
        self,
        urls: Iterable[str],
        *,
        api_key: str | None = None,
        key_name: str | None = None,
        max_concurrent: int = 8,
        timeout_s: float = 120.0,
        retries: int = 8,
        retry_budget_s: float = 300.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.replicas = [_Replica(u.rstrip("/"), threading.Semaphore(max_concurrent)) for u in urls]
        if not self.replicas:
            raise EndpointError("no teacher endpoint given")
        self.max_concurrent = max_concurrent
        self.retries = retries
        self.retry_budget_s = retry_budget_s
        self.stats = PoolStats()
        self._key_hint = (
            f"set {key_name} to a valid key"
            if key_name
            else "set teacher.api_key_env to the variable that holds a valid key"
        )
        self._on_error = on_error
        self._lock = threading.Lock()
        self._pick = threading.Condition(self._lock)
        self._turn = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=max_concurrent * len(self.replicas)),
        )

    @property
    def width(self) -> int:
        """Requests the pool keeps in flight at most."""
        return self.max_concurrent * len(self.replicas)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ one request

    def get(self, path: str) -> Any:
        return self.request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def post_root(self, path: str, body: dict[str, Any]) -> Any:
        """POST to ``path`` under the server's root (the endpoint URL without its ``/v1``):
        where servers keep their extras (llama-cpp-python's ``/extras/tokenize``)."""
        return self.request("POST", "@" + path, body)

    def request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """The JSON answer of the first replica that gives one. Raises ``EndpointDown`` when
        every retry is spent, ``EndpointError`` at once on an answer retrying cannot fix."""
        started = time.monotonic()
        attempt = 0
        while True:
            rep = self._acquire()
            try:
                failure = self._try(rep, method, path, body)
            finally:
                self._release(rep)
            if not isinstance(failure, _Failure):
                return failure
            attempt += 1
            elapsed = time.monotonic() - started
            if attempt >= self.retries or elapsed >= self.retry_budget_s:
                raise EndpointDown(
                    f"teacher endpoint {failure.where} failed {attempt} times in {elapsed:.0f} s "
                    f"(last: {failure.what}); check that the server is up, or raise "
                    "teacher.retries / teacher.retry_budget_s"
                )
            # The back-off belongs to the replica: it leaves the rotation for a while that
            # doubles with its consecutive failures (equal jitter), and the retry goes to
            # another replica at once, or waits in _acquire for the first to come back.
            span = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**rep.failures)
            self._cool_down(rep, span / 2 + random.uniform(0, span / 2))

    def _try(self, rep: _Replica, method: str, path: str, body: dict[str, Any] | None) -> Any:
        base = rep.url.removesuffix("/v1") if path.startswith("@") else rep.url
        url = base + path.lstrip("@")
        try:
            resp = self._http.request(method, url, json=body)
        except httpx.TimeoutException:
            return self._failed(rep, "timeout", "timed out")
        except httpx.TransportError as e:
            return self._failed(rep, "connect", f"cannot connect ({type(e).__name__})")
        with self._lock:
            self.stats.requests += 1
        if resp.status_code in RETRYABLE_STATUS:
            return self._failed(rep, str(resp.status_code), f"HTTP {resp.status_code}")
        if resp.status_code in (401, 403):
            raise EndpointError(
                f"teacher endpoint {rep.url} refused the API key (HTTP {resp.status_code}); "
                f"{self._key_hint}"
            )
        if resp.status_code >= 400:
            raise EndpointError(
                f"teacher endpoint {url} answered HTTP {resp.status_code}: {_snippet(resp)}"
            )
        with self._lock:
            rep.failures = 0
        try:
            return resp.json()
        except ValueError:
            raise EndpointError(
                f"teacher endpoint {url} answered something that is not JSON: {_snippet(resp)}"
            ) from None

    def _failed(self, rep: _Replica, kind: str, what: str) -> _Failure:
        with self._lock:
            self.stats.retries += 1
            self.stats.by_status[kind] = self.stats.by_status.get(kind, 0) + 1
            self.stats.last_error = f"{rep.url}: {what}"
            rep.failures += 1
        if self._on_error:
            self._on_error(self.stats.last_error)
        return _Failure(rep.url, what)

    # ------------------------------------------------------------ replicas

    def _acquire(self) -> _Replica:
        """The usable replica with the fewest requests in flight, once it has a free slot.
        When every replica is cooling down, this waits for the first to come back."""
        with self._pick:
            while True:
                now = time.monotonic()
                up = [r for r in self.replicas if r.down_until <= now]
                if not up:
                    soonest = min(r.down_until for r in self.replicas)
                    self._pick.wait(timeout=soonest - now)
                    continue
                pool = up
                # Fewest in flight first; ties taken in turn, so one-at-a-time callers
                # spread over every replica too.
                self._turn += 1
                n = len(self.replicas)
                order = sorted(
                    pool,
                    key=lambda r: (r.in_flight, (self.replicas.index(r) - self._turn) % n),
                )
                for rep in order:
                    if rep.slots.acquire(blocking=False):
                        rep.in_flight += 1
                        return rep
                self._pick.wait(timeout=0.05)

    def _release(self, rep: _Replica) -> None:
        with self._pick:
            rep.in_flight -= 1
            rep.slots.release()
            self._pick.notify_all()

    def _cool_down(self, rep: _Replica, delay: float) -> None:
        with self._lock:
            rep.down_until = max(rep.down_until, time.monotonic() + delay)

    # ------------------------------------------------------------ many requests

    def map_ordered(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[R]:
        """``fn`` over ``items`` with ``width`` calls in flight, results in input order.

        The window slides over the whole input, across the caller's batch boundaries: the
        next requests are already in flight while earlier results are being written.
        ``on_wait`` runs in the caller's thread about once a second while it waits (to publish
        progress during a stall, or to notice a cancel).
        """

        def result(f: Future[R]) -> R:
            while True:
                try:
                    return f.result(timeout=1.0)
                except TimeoutError:
                    if on_wait:
                        on_wait()

        window: deque[Future[R]] = deque()
        with ThreadPoolExecutor(max_workers=self.width, thread_name_prefix="teacher-http") as ex:
            try:
                for item in items:
                    window.append(ex.submit(fn, item))
                    if len(window) >= self.width * 2:
                        yield result(window.popleft())
                while window:
                    yield result(window.popleft())
            finally:
                for f in window:
                    f.cancel()


@dataclass(frozen=True)
class _Failure:
    where: str
    what: str


def _snippet(resp: httpx.Response, limit: int = 200) -> str:
    text = " ".join(resp.text.split())
    return text[:limit] + ("…" if len(text) > limit else "")
