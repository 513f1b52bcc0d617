"""A fault-injecting HTTP/1.1 proxy for tests: put it between a client and a real S3 server.

It relays requests byte for byte (the Host header is kept, so S3 signatures still verify) on
keep-alive connections, records every request it sees, and injects the failures real networks
and S3 produce, armed at run time from the test::

    with FaultyProxy(s3_server.endpoint) as proxy:      # proxy.endpoint: http://127.0.0.1:PORT
        proxy.fail_next(2, status=503, code="SlowDown")  # S3 XML errors, server never sees them
        proxy.cut_next_response_after(1 << 20, match=lambda r: r.method == "GET")
        proxy.refuse()                                   # connections refused from now on
        assert proxy.count("GET") == 2

Message bodies are framed by Content-Length or chunked transfer encoding (``Expect:
100-continue`` is not supported); a response without either runs until the server closes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Self
from urllib.parse import urlparse
from xml.sax.saxutils import escape

from tests.servers import free_port


@dataclass(frozen=True)
class Request:
    """One request the proxy saw (whether it was forwarded or failed)."""

    method: str
    target: str  # path and query, e.g. /bucket/key?partNumber=1&uploadId=...
    headers: dict[str, str]  # names lower-cased
    body_size: int


Match = Callable[[Request], bool]


@dataclass
class _Rule:
    kind: str  # "fail" or "cut"
    left: int
    match: Match | None
    status: int = 0
    code: str = ""
    nbytes: int = 0
    hits: list[Request] = field(default_factory=list)


class FaultyProxy:
    def __init__(self, upstream: str):
        url = urlparse(upstream if "://" in upstream else "http://" + upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._seen: list[Request] = []
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- control, from the test ------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, code: str = "SlowDown",
                  match: Match | None = None) -> None:
        """The next ``n`` requests (that ``match``) get an S3 XML error, not the server."""
        with self._lock:
            self._rules.append(_Rule("fail", n, match, status=status, code=code))

    def cut_next_response_after(self, nbytes: int, match: Match | None = None) -> None:
        """The next response (to a request that ``match``) is relayed for its head and
        ``nbytes`` of body, then the connection is closed mid-body."""
        with self._lock:
            self._rules.append(_Rule("cut", 1, match, nbytes=nbytes))

    def clear(self) -> None:
        """Drop the armed faults that did not fire, and forget the requests seen."""
        with self._lock:
            self._rules.clear()
            self._seen.clear()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._seen)

    def count(self, method: str | None = None, match: Match | None = None) -> int:
        return sum(1 for r in self.requests
                   if (method is None or r.method == method) and (match is None or match(r)))

    def start(self) -> FaultyProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()
        return self

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and drop every open connection."""
        if self._listener is not None:
            _close(self._listener)  # shutdown wakes the thread blocked in accept()
            self._listener = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _close(conn)

    def stop(self) -> None:
        self.refuse()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- relaying ----------------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by refuse()/stop()
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _take(self, kind: str, req: Request) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.left > 0 and (rule.match is None or rule.match(req)):
                    rule.left -= 1
                    rule.hits.append(req)
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        cin, uin = client.makefile("rb"), None
        try:
            while (head := _read_head(cin)) is not None:  # one request per turn (keep-alive)
                method, target = head[0].split(" ")[:2]
                headers = _headers(head)
                body = bytearray()
                _relay_body(cin, headers, body.extend)
                req = Request(method, target, headers, len(body))
                with self._lock:
                    self._seen.append(req)
                if rule := self._take("fail", req):
                    client.sendall(_s3_error(rule.status, rule.code, target, method == "HEAD"))
                    return  # the error says Connection: close
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    uin = upstream.makefile("rb")
                upstream.sendall(_join(head) + body)
                resp = _read_head(uin)
                if resp is None:
                    return
                client.sendall(_join(resp))
                status, rh = int(resp[0].split(" ")[1]), _headers(resp)
                if method == "HEAD" or status in (204, 304) or status < 200:
                    continue  # no body
                framed = "content-length" in rh or "chunked" in rh.get("transfer-encoding", "")
                cut = self._take("cut", req)
                try:
                    _relay_body(uin, rh, _sender(client, cut.nbytes if cut else None),
                                to_close=not framed)
                except _Cut:
                    return
                if not framed or "close" in rh.get("connection", "").lower():
                    return
        except (OSError, ValueError):
            return  # a peer went away, or refuse() closed the socket under us
        finally:
            with self._lock:
                self._conns.discard(client)
            _close(client)
            if upstream is not None:
                _close(upstream)


class _Cut(Exception):
    pass


def _sender(sock: socket.socket, limit: int | None) -> Callable[[bytes], None]:
    """Send to ``sock``; past ``limit`` bytes, send only up to it and raise _Cut."""
    sent = 0

    def send(data: bytes) -> None:
        nonlocal sent
        if limit is not None and sent + len(data) >= limit:
            sock.sendall(data[: limit - sent])
            raise _Cut
        sock.sendall(data)
        sent += len(data)

    return send


def _relay_body(src, headers: dict[str, str], emit: Callable[[bytes], None],
                to_close: bool = False) -> None:
    """Read one message body from ``src``, passing its raw bytes (framing included) to emit."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = src.readline(65537)
            emit(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:  # trailers, then a blank line
                while True:
                    line = src.readline(65537)
                    emit(line)
                    if line in (b"\r\n", b"\n", b""):
                        return
            _copy(src, size + 2, emit)  # the data and its CRLF
    elif "content-length" in headers:
        _copy(src, int(headers["content-length"]), emit)
    elif to_close:
        while data := src.read1(1 << 16):
            emit(data)


def _copy(src, n: int, emit: Callable[[bytes], None]) -> None:
    while n > 0:
        data = src.read1(min(n, 1 << 16))
        if not data:
            raise ConnectionError("connection closed mid-body")
        emit(data)
        n -= len(data)


def _read_head(f) -> list[str] | None:
    """The request or status line and header lines; None at a clean end of the stream."""
    lines: list[bytes] = []
    while line := f.readline(65537):
        if line in (b"\r\n", b"\n"):
            if lines:
                return [x.decode("latin-1") for x in lines]
            continue  # stray blank line between messages
        lines.append(line.rstrip(b"\r\n"))
    if lines:
        raise ConnectionError("connection closed inside a message head")
    return None


def _headers(head: list[str]) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}


def _join(head: list[str]) -> bytes:
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


def _s3_error(status: int, code: str, resource: str, head_only: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by FaultyProxy: {code}</Message>"
            f"<Resource>{escape(resource.split('?')[0])}</Resource>"
            f"<RequestId>faulty-proxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: faulty-proxy\r\n"
            "Connection: close\r\n\r\n").encode()
    return head if head_only else head + body  # a HEAD response has headers only


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
