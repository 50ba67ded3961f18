"""``koinon serve``: an OpenAI-compatible HTTP API over a checkpoint the swarm released (docs/serving.md).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` (``stream: true`` answers with
server-sent events ending in ``data: [DONE]``). Errors are OpenAI's shape, ``{"error": {"message", "type",
"param", "code"}}``, with the status OpenAI uses (400, 404, 405, 429, 500); a bad request never disturbs the others.

Beyond OpenAI's fields each choice carries ``token_ids`` (the byte tokens behind its text) and every response a
``system_fingerprint`` ``koinon-<θ hash>``: the failover client continues an interrupted answer from exactly the
tokens it got, and checks what model answered.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import time
import uuid
from dataclasses import dataclass

from koinon.serve.engine import Engine, Request
from koinon.training.model import EOS_ID, VOCAB_SIZE, decode_ids, encode_text, token_bytes

logger = logging.getLogger("koinon.serve")

KNOWN_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "n",
    "echo",
    "logprobs",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
}
MAX_PROMPTS = 16  # prompts in one request (each is a row of the batch and counts against the concurrency limit)


@dataclass
class Served:
    """What this server serves: the checkpoint's θ hash, its release tag (None: unreleased), its round."""

    theta: str
    release: str | None
    round: int
    swarm: str | None
    created: int

    @property
    def model_id(self) -> str:
        return f"koinon/{self.release}" if self.release else f"koinon/{self.theta[:12]}"

    @property
    def fingerprint(self) -> str:
        return f"koinon-{self.theta}"

    def names(self) -> set[str]:
        """What a request's ``model`` may say: the id, the θ hash, or the release tag."""
        return {self.model_id, self.theta, *([self.release] if self.release else [])}


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape; its ``type`` from the status as OpenAI uses them."""
    kind = "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- validating a request -------------------------------------------------------------------------------------------
@dataclass
class Completion:
    prompts: list[list[int]]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool
    stop: list[str]
    echo: bool


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(400, f"{name} must be a number, not {type(value).__name__}", name, "invalid_type")
    if not (low < value if low_open else low <= value) or value > high:
        side = "(" if low_open else "["
        raise BadRequest(400, f"{name} must be in {side}{low}, {high}]; got {value}", name, "invalid_value")
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(400, f"{name} must be an integer, not {type(value).__name__}", name, "invalid_type")
    return value


def _prompts(value) -> list[list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids (OpenAI's four forms)."""
    if value is None:
        raise BadRequest(400, "prompt is required", "prompt", "missing_required_parameter")

    def tokens(item) -> list[int]:
        if isinstance(item, str):
            return encode_text(item) or [EOS_ID]  # an empty prompt starts from the end-of-text token, as in GPT-2
        if isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            if any(not 0 <= t < VOCAB_SIZE for t in item):
                raise BadRequest(400, f"token ids must be in [0, {VOCAB_SIZE})", "prompt", "invalid_value")
            return list(item)
        raise BadRequest(
            400, "prompt must be a string, a list of strings, or a list of token ids", "prompt", "invalid_type"
        )

    if isinstance(value, str):
        return [tokens(value)]
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [tokens(value)]
    if isinstance(value, list) and value:
        if len(value) > MAX_PROMPTS:
            raise BadRequest(400, f"at most {MAX_PROMPTS} prompts in one request", "prompt", "invalid_value")
        return [tokens(v) for v in value]
    raise BadRequest(
        400, "prompt must be a string, a list of strings, or a list of token ids", "prompt", "invalid_type"
    )


def parse_completion(body, served: Served, context: int) -> Completion:
    if not isinstance(body, dict):
        raise BadRequest(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise BadRequest(400, f"unrecognized request argument: {unknown[0]}", unknown[0], "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest(400, "model is required (a string; GET /v1/models lists it)", "model", "invalid_type")
    if model not in served.names():
        raise BadRequest(
            404,
            f"the model {model!r} does not exist here; this server has {served.model_id}",
            "model",
            "model_not_found",
        )
    prompts = _prompts(body.get("prompt"))
    longest = max(len(p) for p in prompts)
    if longest >= context:
        raise BadRequest(
            400,
            f"this model's maximum context length is {context} tokens; the prompt has {longest} (a token is a byte)",
            "prompt",
            "context_length_exceeded",
        )
    max_tokens = _integer(body, "max_tokens")
    max_tokens = 16 if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= context - longest:
        raise BadRequest(
            400,
            f"max_tokens must be in [1, {context - longest}] (the context is {context} tokens and the prompt has "
            f"{longest}); got {max_tokens}",
            "max_tokens",
            "invalid_value",
        )
    for name, allowed in (("n", 1), ("best_of", 1)):
        value = _integer(body, name)
        if value is not None and value != allowed:
            raise BadRequest(400, f"{name} must be {allowed}: this server returns one choice per prompt", name)
    for name in ("logprobs", "suffix", "logit_bias"):
        if body.get(name) is not None:
            raise BadRequest(400, f"{name} is not supported by this server", name, "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise BadRequest(400, f"{name} is not supported by this server (only 0)", name, "unsupported_parameter")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(400, "stop must be a non-empty string or a list of at most 4 of them", "stop", "invalid_value")
    flags = {}
    for name in ("stream", "echo"):
        value = body.get(name, False)
        if value is None:
            value = False
        if not isinstance(value, bool):
            raise BadRequest(400, f"{name} must be true or false", name, "invalid_type")
        flags[name] = value
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest(400, "stream_options must be an object", "stream_options", "invalid_type")
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise BadRequest(400, "user must be a string", "user", "invalid_type")
    return Completion(
        prompts=prompts,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=_integer(body, "seed"),
        stream=flags["stream"],
        include_usage=bool(options.get("include_usage")),
        stop=stops,
        echo=flags["echo"],
    )


# --- one choice's text as tokens arrive -----------------------------------------------------------------------------
class Choice:
    """Decodes a choice's byte tokens incrementally (a character may span tokens) and applies stop strings. Text
    that could still be the start of a stop string is held back until it cannot."""

    def __init__(self, index: int, stops: list[str], prefix: str = "") -> None:
        self.index, self.stops = index, stops
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = prefix  # all of it (echoed prompt included)
        self.sent = 0  # how much of ``text`` went out
        self.ids: list[int] = []
        self.unsent_ids: list[int] = []
        self.finish: str | None = None

    def add(self, token: int) -> None:
        self.ids.append(token)
        self.unsent_ids.append(token)
        self.text += self._decoder.decode(token_bytes([token]))
        for s in self.stops:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                self.finish = "stop"
                return

    def end(self, reason: str) -> None:
        if self.finish is None:
            self.text += self._decoder.decode(b"", final=True)
            self.finish = reason

    def take(self) -> tuple[str, list[int]]:
        """The text that can go out now, and the token ids behind it since the last take."""
        hold = 0 if self.finish else max((len(s) - 1 for s in self.stops), default=0)
        upto = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : upto], upto
        ids, self.unsent_ids = self.unsent_ids, []
        return out, ids


# --- the application ----------------------------------------------------------------------------------------------
def build_app(served: Served, engine: Engine, max_concurrency: int):
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def fail(status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)

    async def health(_request: HttpRequest):
        return JSONResponse(
            {
                "status": "ok",
                "model": served.model_id,
                "model_hash": served.theta,
                "release": served.release,
                "round": served.round,
                "swarm": served.swarm,
                "load": engine.active,
                "capacity": max_concurrency,
                "context": engine.context,
            }
        )

    async def models(_request: HttpRequest):
        return JSONResponse({"object": "list", "data": [model_card()]})

    def model_card() -> dict:
        return {
            "id": served.model_id,
            "object": "model",
            "created": served.created,
            "owned_by": f"koinon swarm {served.swarm[:12]}" if served.swarm else "koinon",
            "model_hash": served.theta,
            "release": served.release,
        }

    async def completions(request: HttpRequest):
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRequest(400, f"the body is not valid JSON: {e}") from None
            job = parse_completion(body, served, engine.context)
        except BadRequest as e:
            return fail(e.status, e.message, e.param, e.code)
        if engine.active + len(job.prompts) > max_concurrency:
            return fail(
                429,
                f"this server is answering {engine.active} requests (at most {max_concurrency}); retry shortly or "
                "use another server",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        requests = []
        for i, prompt in enumerate(job.prompts):
            r = Request(
                prompt=prompt,
                max_tokens=job.max_tokens,
                temperature=job.temperature,
                top_p=job.top_p,
                seed=job.seed,
                on_token=lambda item, i=i: loop.call_soon_threadsafe(inbox.put_nowait, (i, item)),
            )
            requests.append(engine.submit(r))
        choices = [Choice(i, job.stop, decode_ids(p) if job.echo else "") for i, p in enumerate(job.prompts)]
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def usage() -> dict:
            prompt_tokens = sum(len(p) for p in job.prompts)
            completion_tokens = sum(len(c.ids) for c in choices)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }

        def envelope(choice_list: list[dict], **more) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": served.model_id,
                "system_fingerprint": served.fingerprint,
                "choices": choice_list,
                **more,
            }

        async def next_event() -> None:
            """Wait for the next token (then take every one already waiting: a busy server sends them in one
            chunk), or the end of a choice; cancel a choice that hit a stop string."""
            take(*await inbox.get())
            while not inbox.empty():
                take(*inbox.get_nowait())

        def take(i: int, item: tuple[int | None, str | None]) -> None:
            token, reason = item
            c = choices[i]
            if c.finish is not None and reason is None:
                return  # a token after a stop string: the cancel is on its way
            if token is not None:
                c.add(token)
                if c.finish is not None:
                    requests[i].cancel()
            else:
                c.end("length" if reason == "length" else "stop" if reason in ("stop", "cancelled") else "error")
                if reason.startswith("error"):
                    logger.warning("a completion failed: %s", reason)

        if not job.stream:
            try:
                while any(c.finish is None for c in choices):
                    await next_event()
            finally:
                for r in requests:
                    r.cancel()
            if any(c.finish == "error" for c in choices):
                return fail(500, "the model failed on this request; the server goes on", code="server_error")
            out = []
            for c in choices:
                out.append(
                    {"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish, "token_ids": c.ids}
                )
            return JSONResponse(envelope(out, usage=usage()))

        async def events():
            try:
                sent_final = set()
                for c in choices:  # echo: the prompt goes out first
                    text, _ = c.take()
                    if text:
                        yield sse(envelope([delta(c, text, [], None)]))
                while len(sent_final) < len(choices):
                    await next_event()
                    for c in choices:
                        if c.index in sent_final:
                            continue
                        text, ids = c.take()
                        if c.finish is not None:
                            sent_final.add(c.index)
                            yield sse(envelope([delta(c, text, ids, c.finish)]))
                        elif text or ids:
                            yield sse(envelope([delta(c, text, ids, None)]))
                if job.include_usage:
                    yield sse(envelope([], usage=usage()))
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or we are done): free the batch rows
                for r in requests:
                    r.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def delta(c: Choice, text: str, ids: list[int], finish: str | None) -> dict:
        return {"text": text, "index": c.index, "logprobs": None, "finish_reason": finish, "token_ids": ids}

    def sse(obj: dict) -> str:
        return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

    async def http_error(_request, exc: HTTPException):
        messages = {
            404: "no such endpoint (this server has /health, /v1/models and /v1/completions)",
            405: "method not allowed here (GET /health, GET /v1/models, POST /v1/completions)",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        return fail(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)

    async def server_error(_request, exc: Exception):
        logger.exception("request failed", exc_info=exc)
        return fail(500, "internal error; the server goes on", code="server_error")

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


__all__ = ["BadRequest", "Choice", "Served", "build_app", "error_body", "parse_completion"]
