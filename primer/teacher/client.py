"""The teacher client: many chat requests in flight, politely, and never the same one twice.

>>> teacher = Teacher(TeacherConfig(url="http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct",
...                                 cache_uri="./primer-data/cache/teacher"))
>>> done = await teacher.complete_many([ChatRequest(messages, seed=i) for i in range(1000)])

- bounded concurrency (``max_concurrency``), request and token rate limits;
- retries with exponential backoff and full jitter on 429, 5xx, timeouts, dropped
  connections and malformed responses, honouring ``Retry-After``; other 4xx (bad key, bad
  request) fail at once, since repeating them cannot help;
- a response cache keyed by (model, messages, sampling params, seed): reruns are free and a
  retried task yields the same record;
- token usage and, with prices set, cost accounting in :attr:`Teacher.usage`.

Chat requests (:class:`ChatRequest`) go to ``/v1/chat/completions``; raw prompts
(:class:`TextRequest`, a benchmark's base-model completions) to ``/v1/completions``.
The backend is an OpenAI-compatible endpoint through the ``openai`` package, or, when
``url`` is a local checkpoint folder, a transformers model run in-process (``local.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import copy
import email.utils
import importlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import openai

from primer.teacher.cache import ResponseCache, request_key
from primer.teacher.config import TeacherConfig
from primer.teacher.limits import TokenBucket

log = logging.getLogger("primer.teacher")

POOL_SHARD_SIZE = 64
"""Most connections one HTTP client holds; more concurrency spreads over more clients."""
CACHE_THREADS = 64
"""Most threads doing cache reads and writes at once (each waits on S3 or a slow disk)."""
WRITER_BACKLOG = 8
"""Queued cache writes per writing thread before another thread joins in: a slow store (S3)
gets more writing threads, up to CACHE_THREADS."""
INLINE_IO_BUDGET_S = 0.0005
"""Mean seconds a cache read or write may hold the event loop. A local disk answers in tens of
microseconds, so the loop reads and writes it itself: handing each call to a thread cost ten
times the call (bench/generation.py at C = 128: 0.5 ms of CPU per write in a thread, mostly
the GIL passing back and forth at each system call, against 0.05 ms on the loop). A local
store slower than that hand-off on average (a network file system, a busy disk) would stall
every request in flight, so its calls move to the cache threads for the rest of the run."""
INLINE_IO_WINDOW = 16
"""Calls the running mean of the loop's cache calls spans: one slow call does not move the
cache to the threads, a slow store does within a few calls."""


class TeacherError(Exception):
    """A request failed for good: a non-retryable answer, or retries exhausted."""

    def __init__(self, message: str, key: str = "", attempts: int = 0):
        super().__init__(message)
        self.key, self.attempts = key, attempts


class _Malformed(Exception):
    """The server answered 200 with something that is not a usable chat completion."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request; every field takes part in the cache key."""

    messages: list[dict[str, str]]
    temperature: float = 0.0
    max_tokens: int = 1024
    seed: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens,
                "seed": self.seed, "top_p": self.top_p,
                "stop": list(self.stop) if self.stop else None}

    def key(self, model: str) -> str:
        return request_key(model, self.messages, self.params())

    def chars(self) -> int:
        return sum(len(m.get("content", "")) for m in self.messages)


@dataclass(frozen=True)
class TextRequest:
    """A raw prompt to continue (``/v1/completions``), ``n`` choices in one request: what a
    benchmark harness sends a base model. Cached, retried and rate-limited like a chat."""

    prompt: str
    temperature: float = 0.0
    max_tokens: int = 1024
    seed: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    n: int = 1

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens,
                "seed": self.seed, "top_p": self.top_p, "n": self.n,
                "stop": list(self.stop) if self.stop else None}

    def key(self, model: str) -> str:
        # A prompt, not messages, in the hashed body: no chat request shares its key.
        return request_key(model, [], {"prompt": self.prompt, **self.params()})

    def chars(self) -> int:
        return len(self.prompt) * self.n


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    key: str
    """The request hash (``prompt_hash`` in generated records)."""
    cached: bool = False
    attempts: int = 1
    choices: tuple[str, ...] = ()
    """Every choice's text, in order, for a request of ``n`` > 1 (``text`` is the first)."""


#: Upper bounds (seconds) of the teacher latency histogram; a completion takes from a fraction
#: of a second to minutes.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0)


@dataclass
class Usage:
    """Running totals; safe to read from another thread (a progress bar)."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    """Summed wall time of the answered requests (successful attempts, cache hits excluded):
    latency_s / requests is the teacher's mean latency."""
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    """Answered requests per latency bucket: slot i counts those at most LATENCY_BUCKETS[i]
    seconds (and above the previous bound), the last slot the slower ones."""
    cost_usd: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                if name == "cost_usd":
                    self.cost_usd = (self.cost_usd or 0.0) + value
                else:
                    setattr(self, name, getattr(self, name) + value)

    def answered(self, latency_s: float, **counts: float) -> None:
        """One answered request that took ``latency_s`` seconds."""
        slot = bisect.bisect_left(LATENCY_BUCKETS, latency_s)
        with self._lock:
            self.latency_counts[slot] += 1
        self.add(requests=1, latency_s=latency_s, **counts)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:  # (asdict would deep-copy the lock, which cannot be copied)
            return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)
                    if f.name != "_lock"}


Request = ChatRequest | TextRequest


class Teacher:
    """Async completions (chat or text) against one teacher; see the module docstring."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        self.usage = Usage()
        self.cache = ResponseCache(config.cache_uri) if config.cache_uri else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cache_pool: ThreadPoolExecutor | None = None
        self._cache_threads = min(config.max_concurrency, CACHE_THREADS)
        # Cache writes wait here for the cache threads (see _put_later); failed ones are
        # counted and logged, never raised: the answer they would have kept is still returned.
        self._puts: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._writers: set[asyncio.Future[None]] = set()
        self._put_lock = threading.Lock()
        self.cache_write_failures = 0
        self._inline_mean_s = 0.0  # running mean of the loop's own cache calls
        self._inline_ok = True  # False once that mean went over INLINE_IO_BUDGET_S
        self._local = None
        if config.is_local_checkpoint():
            from primer.teacher.local import LocalBackend

            self._local = LocalBackend(config.url)

    @property
    def name(self) -> str:
        """How records name their teacher: model @ endpoint."""
        return f"{self.config.model}@{self.config.url or 'openai'}"

    # -- per event loop state (an httpx client and asyncio primitives belong to one loop) ----

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        config = self.config
        # A slot is the index of the HTTP client a request may use: taking one bounds the
        # requests in flight overall and per client, so no client's pool ever waits.
        shards = -(-config.max_concurrency // POOL_SHARD_SIZE)
        self._slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(config.max_concurrency):
            self._slots.put_nowait(slot % shards)
        self._rpm = TokenBucket(config.requests_per_minute) if config.requests_per_minute \
            else None
        self._tpm = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        if self._local is None:
            # httpcore's pool rescans every connection it holds whenever a request starts or
            # a response ends, so one pool of C connections costs O(C) CPU per request (at
            # C = 512 more than the request itself). Several clients of at most
            # POOL_SHARD_SIZE connections keep that scan short; each keeps every connection
            # it may use alive, so none is reopened between requests.
            per_shard = -(-config.max_concurrency // shards)
            limits = _http_module().Limits(max_connections=per_shard,
                                           max_keepalive_connections=per_shard)
            self._clients = [openai.AsyncOpenAI(
                base_url=config.url or None, api_key=config.api_key(), max_retries=0,
                timeout=config.timeout_s,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits,
                                                           timeout=config.timeout_s))
                for _ in range(shards)]

    def _pool(self) -> ThreadPoolExecutor:
        """The cache's own threads: the loop's default pool has only min(32, cpus + 4),
        shared with everything else, and hundreds of requests in flight would queue there."""
        if self._cache_pool is None:
            self._cache_pool = ThreadPoolExecutor(max_workers=self._cache_threads,
                                                  thread_name_prefix="teacher-cache")
        return self._cache_pool

    def _inline(self) -> bool:
        """Whether the loop makes the cache's calls itself (see INLINE_IO_BUDGET_S)."""
        return self._inline_ok and self.cache is not None and self.cache.store.local

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A cache call made on the event loop, timed: a store whose calls take too long on
        average has its later calls made on the cache threads."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - started
            self._inline_mean_s += (took - self._inline_mean_s) / INLINE_IO_WINDOW
            if self._inline_ok and self._inline_mean_s > INLINE_IO_BUDGET_S:
                self._inline_ok = False
                assert self.cache is not None
                log.info("the teacher cache %s takes %.1f ms a call on average; its reads "
                         "and writes move off the event loop to threads",
                         self.cache.store.uri, self._inline_mean_s * 1000)

    async def _get(self, key: str) -> dict[str, Any] | None:
        """The cache's entry for ``key``; None for a miss, or when there is no cache."""
        if self.cache is None:
            return None
        if self._inline():
            return self._on_loop(self.cache.get, key)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.cache.get,
                                                                key)

    # Cache writes happen behind the answers. A local store is written on the loop at once;
    # for any other, writes are queued and written by as few cache threads as keep up (each
    # drains the queue, so a thread is woken once per batch, not per answer). complete_many
    # and aclose wait for them, so a batch's answers are all in the cache before its caller
    # goes on, as when each answer waited for its own write.

    def _put_later(self, key: str, entry: dict[str, Any]) -> None:
        if self._inline():
            self._on_loop(self._put, key, entry)
            return
        self._puts.append((key, entry))
        if len(self._writers) < self._cache_threads and \
                len(self._puts) > WRITER_BACKLOG * len(self._writers):
            self._start_writer()

    def _start_writer(self) -> None:
        writer = asyncio.get_running_loop().run_in_executor(self._pool(), self._write_puts)
        self._writers.add(writer)
        writer.add_done_callback(self._writer_done)

    def _writer_done(self, writer: asyncio.Future[None]) -> None:
        # On the loop: a write queued while the last writer was finding the queue empty
        # found that writer still counted, so it is picked up here.
        self._writers.discard(writer)
        if self._puts and not self._writers:
            self._start_writer()

    def _write_puts(self) -> None:
        while True:
            try:
                key, entry = self._puts.popleft()
            except IndexError:
                return
            self._put(key, entry)

    def _put(self, key: str, entry: dict[str, Any]) -> None:
        """One cache write; a failed one is counted and logged (once), never raised."""
        assert self.cache is not None
        try:
            self.cache.put(key, entry)
        except Exception as exc:  # a full disk, S3 down: the answer is returned anyway
            with self._put_lock:
                self.cache_write_failures += 1
                first = self.cache_write_failures == 1
            if first:
                log.warning("cannot write teacher answers to the cache %s (%s); they are "
                            "returned but a rerun asks for them again", self.cache.store.uri,
                            exc)

    async def _drain_puts(self) -> None:
        """Until every queued cache write is written (or failed and counted)."""
        while self._writers:
            await asyncio.gather(*self._writers)

    # -- public API -----------------------------------------------------------------------------

    async def complete(self, request: Request) -> Completion:
        """One completion, from the cache when it holds this exact request (else the
        teacher's, then written to the cache behind the answer)."""
        self._bind_loop()
        key = request.key(self.config.model)
        hit = await self._get(key)
        if hit is not None:
            self.usage.add(cached=1)
            return Completion(**{**hit, "choices": tuple(hit.get("choices", ())),
                                 "cached": True, "key": key})
        slot = await self._slots.get()
        try:
            completion = await self._with_retries(request, key, slot)
        finally:
            self._slots.put_nowait(slot)
        if self.cache is not None:
            entry = asdict(completion)
            entry.pop("cached"), entry.pop("key")
            self._put_later(key, entry)
        return completion

    async def complete_many(self, requests: Sequence[Request],
                            on_done: Callable[[Completion | TeacherError], None] | None = None,
                            ) -> list[Completion | TeacherError]:
        """All ``requests`` concurrently (bounded); failures come back as TeacherError values,
        in the same order as the requests."""

        async def one(request: Request) -> Completion | TeacherError:
            try:
                result: Completion | TeacherError = await self.complete(request)
            except TeacherError as exc:
                result = exc
            if on_done is not None:
                on_done(result)
            return result

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await self._drain_puts()

    def complete_sync(self, request: Request) -> Completion:
        async def once() -> Completion:
            try:
                return await self.complete(request)
            finally:
                await self.aclose()

        return asyncio.run(once())

    async def aclose(self) -> None:
        """Close the HTTP connections; call it on the loop that used them, before that loop
        ends (``asyncio.run`` closes the loop, and connections closed later fail noisily)."""
        await self._drain_puts()
        if self._loop is asyncio.get_running_loop():
            for client in getattr(self, "_clients", ()):
                await client.close()
            self._loop = None  # the next call on any loop starts afresh
        if self._cache_pool is not None:
            self._cache_pool.shutdown(wait=False)  # (its calls have all been awaited)
            self._cache_pool = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        c = self.config
        if c.price_input_per_1k is None and c.price_output_per_1k is None:
            return None
        return (prompt_tokens * (c.price_input_per_1k or 0.0)
                + completion_tokens * (c.price_output_per_1k or 0.0)) / 1000.0

    def estimate_cost(self, n_requests: int, prompt_tokens: int, max_tokens: int) -> float | None:
        """Upper bound before a run: every request uses its whole completion budget."""
        per = self.cost(prompt_tokens, max_tokens)
        return None if per is None else per * n_requests

    # -- the retry loop -------------------------------------------------------------------------

    async def _with_retries(self, request: Request, key: str, slot: int) -> Completion:
        config = self.config
        last = ""
        for attempt in range(1, config.max_retries + 2):
            if self._rpm is not None:
                await self._rpm.acquire(1)
            if self._tpm is not None:
                n = request.n if isinstance(request, TextRequest) else 1
                await self._tpm.acquire(request.chars() / 4 + request.max_tokens * n)
            started = time.monotonic()
            try:
                texts, finish, p_tok, c_tok = await self._call(request, slot)
            except TeacherError:
                self.usage.add(failures=1)
                raise
            except Exception as exc:  # classified below: retry, or fail at once
                delay = self._retry_delay(exc, attempt)
                if delay is None:
                    self.usage.add(failures=1)
                    raise TeacherError(f"teacher {self.name} refused the request: "
                                       f"{_describe(exc)}", key, attempt) from None
                last = _describe(exc)
                if attempt > config.max_retries:
                    break
                self.usage.add(retries=1)
                log.debug("teacher retry %d in %.2fs: %s", attempt, delay, last)
                await asyncio.sleep(delay)
                continue
            cost = self.cost(p_tok, c_tok)
            self.usage.answered(time.monotonic() - started, prompt_tokens=p_tok,
                                completion_tokens=c_tok,
                                **({"cost_usd": cost} if cost is not None else {}))
            return Completion(texts[0], finish, p_tok, c_tok, config.model, key, False, attempt,
                              texts if len(texts) > 1 else ())
        self.usage.add(failures=1)
        raise TeacherError(f"teacher {self.name}: gave up after {config.max_retries + 1} "
                           f"attempts; last error: {last}", key, config.max_retries + 1)

    async def _call(self, request: Request, slot: int) -> tuple[tuple[str, ...], str, int, int]:
        """(the choices' texts, the first's finish reason, prompt and completion tokens)."""
        if self._local is not None:
            return await self._call_local(request)
        kwargs: dict[str, Any] = {"model": self.config.model,
                                  "temperature": request.temperature,
                                  "max_tokens": request.max_tokens}
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.stop:
            kwargs["stop"] = list(request.stop)
        client = self._clients[slot]
        if isinstance(request, TextRequest):
            resp = await client.completions.create(prompt=request.prompt, n=request.n, **kwargs)
        else:
            resp = await client.chat.completions.create(messages=request.messages, **kwargs)
        try:
            choices = sorted(resp.choices, key=lambda c: c.index)
            texts = tuple(c.text if isinstance(request, TextRequest) else c.message.content
                          for c in choices)
        except (AttributeError, TypeError):
            raise _Malformed(f"no choices in the response: {str(resp)[:200]}") from None
        wanted = request.n if isinstance(request, TextRequest) else 1
        if len(texts) < wanted:
            raise _Malformed(f"{len(texts)} choices in the response, asked for {wanted}")
        if any(t is None for t in texts):
            raise _Malformed("the response has no message content")
        usage = getattr(resp, "usage", None)
        p_tok = getattr(usage, "prompt_tokens", None) or 0
        c_tok = getattr(usage, "completion_tokens", None) or sum(map(len, texts)) // 4
        return texts[:wanted], choices[0].finish_reason or "stop", p_tok, c_tok

    async def _call_local(self, request: Request) -> tuple[tuple[str, ...], str, int, int]:
        """The in-process checkpoint: a text request's ``n`` choices are seeds seed, seed+1…
        (as ``primer serve`` answers them)."""
        assert self._local is not None
        if isinstance(request, ChatRequest):
            text, finish, p_tok, c_tok = await self._local.generate(request)
            return (text,), finish, p_tok, c_tok
        texts, finish, p_tok, c_tok = [], "stop", 0, 0
        for i in range(request.n):
            text, f, p_tok, c = await self._local.complete(
                request.prompt, request.max_tokens, request.temperature, request.top_p,
                (request.seed or 0) + i, request.stop)
            texts.append(text)
            finish = f if i == 0 else finish
            c_tok += c
        return tuple(texts), finish, p_tok, c_tok

    def _retry_delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds to wait before retrying ``exc``, or None when retrying cannot help."""
        config = self.config
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if not (status in (408, 409, 429) or status >= 500):
                return None  # 400 bad request, 401 bad key, 404 unknown model, ...
            after = _retry_after(exc.response.headers if exc.response is not None else {})
            if after is not None:
                return min(after, config.backoff_max_s)
        elif not isinstance(exc, openai.APIConnectionError | openai.APIResponseValidationError
                            | _Malformed | ValueError):  # ValueError: a body that is not JSON
            return None
        # Full jitter: spread retries of many clients over the whole window.
        return random.uniform(0, min(config.backoff_max_s, config.backoff_base_s * 2 ** attempt))


def _http_module():
    """The HTTP library the installed openai SDK is built on (httpx, or httpx2 in newer
    releases): its ``Limits`` must be the one its client class accepts."""
    base = openai.DefaultAsyncHttpxClient.__mro__[1]
    return importlib.import_module(base.__module__.split(".")[0])


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {str(exc)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"
