"""Using the swarm's model: find servers through the DHT, pick one, fail over mid-answer (docs/serving.md).

``Client.complete`` streams one completion. Servers come from ``--server`` URLs or from the signed
``<swarm>_servers`` records that ``koinon serve`` keeps in the DHT (koinon.swarm.announce: forged or malformed
ones are skipped); each is probed (``GET /health``: latency, live load, model hash; a server whose answer is
malformed is skipped) and the client uses the least loaded, nearest one whose model hash is allowed (a release's
θ). If that server dies in the middle of the answer (connection closed or reset, no chunk for ``read_timeout``
seconds, a 5xx), the client sends the prompt plus the tokens it already has to the next server, as token ids, and
goes on: for greedy decoding the answer is exactly the one an uninterrupted server would have given. Only stdlib
HTTP: no dependency.
"""

from __future__ import annotations

import codecs
import http.client
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from koinon.errors import KoinonError
from koinon.training.model import encode_text, token_bytes

logger = logging.getLogger("koinon.serve")


class ServeError(KoinonError):
    """No server could answer, or the request itself was refused (the server's message says why)."""


class _ServerFailed(Exception):
    """This server failed; another may answer."""


@dataclass
class Server:
    url: str
    model: str = ""
    model_hash: str = ""
    release: str | None = None
    load: int = 0
    capacity: int = 1
    latency: float = float("inf")

    def score(self) -> tuple:
        return (self.load >= self.capacity, self.latency * (1 + self.load))


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    finish_reason: str
    servers: list[str] = field(default_factory=list)  # the servers that produced it, in order
    failover_s: list[float] = field(default_factory=list)  # per failover: failure → the next server's first token


def _request(url: str, method: str, path: str, body: dict | None, timeout: float) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ServeError(f"server URL {url!r} must start with http:// or https://")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, (parts.path.rstrip("/") + path), body=data, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def probe(url: str, timeout: float = 3.0) -> Server | None:
    """The server's /health, with the round trip measured; None when it does not answer properly."""
    t0 = time.monotonic()
    try:
        resp = _request(url, "GET", "/health", None, timeout)
        info = json.loads(resp.read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if resp.status != 200 or not isinstance(info, dict) or not isinstance(info.get("model_hash"), str):
        return None
    load, capacity, release = info.get("load", 0), info.get("capacity", 1), info.get("release")
    if not _is_int(load) or not _is_int(capacity) or not isinstance(release, (str, type(None))):
        logger.warning("server %s: malformed /health (load %.40r, capacity %.40r); skipping it", url, load, capacity)
        return None
    return Server(
        url=url,
        model=str(info.get("model", "")),
        model_hash=info["model_hash"],
        release=release,
        load=max(0, load),
        capacity=max(1, capacity),
        latency=time.monotonic() - t0,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def discover_urls(dht, swarm_id: str) -> list[str]:
    """The endpoints ``koinon serve`` processes of this swarm announce in the DHT."""
    from koinon.swarm.announce import FIELD_TYPES, live_records, record_key

    records = live_records(dht, record_key(serve_key(swarm_id), "servers"), "load", types=FIELD_TYPES["servers"])
    return sorted({v["url"] for v in records.values() if isinstance(v.get("url"), str)})


def serve_key(swarm_id: str) -> str:
    return f"koinon_{swarm_id[:16]}"


class Client:
    """``Client(urls, allowed_hashes).complete(prompt)``; ``allowed_hashes`` None accepts any model (but one
    answer never mixes models: failover only goes to servers of the same hash)."""

    def __init__(
        self,
        urls: Sequence[str],
        allowed_hashes: set[str] | None = None,
        read_timeout: float = 10.0,
        connect_timeout: float = 3.0,
    ) -> None:
        self.urls = list(dict.fromkeys(urls))
        self.allowed = allowed_hashes
        self.read_timeout, self.connect_timeout = read_timeout, connect_timeout

    def servers(self) -> list[Server]:
        """Live servers with an allowed model, best first."""
        found = [s for s in (probe(u, self.connect_timeout) for u in self.urls) if s is not None]
        usable = [s for s in found if self.allowed is None or s.model_hash in self.allowed]
        if not usable:
            if found:
                served = ", ".join(sorted({f"{s.model} ({s.model_hash[:12]})" for s in found}))
                wanted = ", ".join(sorted(h[:12] for h in self.allowed or ()))
                raise ServeError(
                    f"{len(found)} server(s) answer, but none serves the expected model {wanted}: {served}"
                )
            raise ServeError(
                f"none of the {len(self.urls)} server(s) answered: {', '.join(self.urls) or '(none found)'}"
            )
        return sorted(usable, key=Server.score)

    def complete(
        self,
        prompt: str | list[int],
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        prompt_ids = encode_text(prompt) if isinstance(prompt, str) else list(prompt)
        candidates = self.servers()
        pinned = candidates[0].model_hash
        answer = Answer(text="", token_ids=[], finish_reason="length")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        failed_at: float | None = None  # when the last server failed, until the next one's first token

        def emit(text: str) -> None:
            answer.text += text
            if on_text is not None and text:
                on_text(text)

        def add(ids: list[int]) -> None:
            nonlocal failed_at
            if failed_at is not None and ids:
                answer.failover_s.append(time.monotonic() - failed_at)
                failed_at = None
            answer.token_ids.extend(ids)
            emit(decoder.decode(token_bytes(ids)))

        last_error = ""
        for server in (s for s in candidates if s.model_hash == pinned):
            got = len(answer.token_ids)
            if got >= max_tokens:
                break
            body = {
                "model": server.model,
                "prompt": prompt_ids + answer.token_ids,
                "max_tokens": max_tokens - got,
                "temperature": temperature,
                "top_p": top_p,
                "stream": True,
                **({"seed": seed} if seed is not None else {}),
            }
            answer.servers.append(server.url)
            try:
                answer.finish_reason = self._stream(server, body, add)
                break
            except _ServerFailed as e:
                last_error = str(e)
                failed_at = failed_at or time.monotonic()
                logger.warning(
                    "server %s failed after %d tokens (%s); trying the next one", server.url, len(answer.token_ids), e
                )
        else:
            if len(answer.token_ids) < max_tokens:
                raise ServeError(f"every server failed before the answer was complete (last: {last_error})")
        emit(decoder.decode(b"", final=True))
        return answer

    def _stream(self, server: Server, body: dict, on_tokens) -> str:
        """Stream one request; the finish reason, or _ServerFailed (ServeError: the request itself is bad)."""
        try:
            resp = _request(server.url, "POST", "/v1/completions", body, self.read_timeout)
        except (OSError, http.client.HTTPException) as e:
            raise _ServerFailed(f"no connection: {e!r}") from e
        if resp.status != 200:
            try:
                message = json.loads(resp.read())["error"]["message"]
            except Exception:
                message = f"HTTP {resp.status}"
            if resp.status == 429 or resp.status >= 500:
                raise _ServerFailed(f"HTTP {resp.status}: {message}")
            raise ServeError(f"{server.url} refused the request (HTTP {resp.status}): {message}")
        try:
            while True:
                line = resp.readline()
                if not line:
                    raise _ServerFailed("the stream ended before [DONE]")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    raise _ServerFailed("[DONE] without a finish reason")
                chunk = json.loads(data)
                if chunk.get("system_fingerprint") not in (None, f"koinon-{server.model_hash}"):
                    raise _ServerFailed("the server answered with another model than it advertised")
                for choice in chunk.get("choices", []):
                    on_tokens([int(t) for t in choice.get("token_ids", [])])
                    if choice.get("finish_reason"):
                        return str(choice["finish_reason"])
        except (OSError, http.client.HTTPException, ValueError) as e:  # timeouts are OSErrors
            raise _ServerFailed(f"the stream broke: {e!r}") from e
        finally:
            resp.close()


__all__ = ["Answer", "Client", "ServeError", "Server", "discover_urls", "probe", "serve_key"]
