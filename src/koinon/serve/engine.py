"""Batched generation with a KV cache: the part of ``koinon serve`` that runs the model (docs/serving.md).

One thread owns the model. Requests wait in a queue; the thread takes every request waiting (up to
``max_batch``), left-pads their prompts into one batch and generates a token per row per forward pass, feeding
only the new tokens back with the cache of keys and values of everything before. A row that ends (its
``max_tokens``, the end-of-text token, the model's context, or a cancel) stops producing; the wave ends when every
row has. Requests that arrive during a wave wait for the next one (static batching: simple, and on a CPU the
forward pass of a batch of 16 costs far less than 16 passes).

Greedy decoding of a single prompt performs the same forward passes as ``transformers``' ``generate`` (the same
position ids from the attention mask, the same cache), so its tokens are identical (tests/unit/test_serve_engine.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from koinon.training.model import EOS_ID, PAD_ID

logger = logging.getLogger("koinon.serve")


@dataclass
class Request:
    """One completion: its prompt (token ids) and sampling settings; tokens come out of ``tokens``."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    submitted: float = field(default_factory=time.monotonic)
    # (token id, None) per token, then (None, finish reason: "stop" | "length" | "cancelled" | "error: …")
    tokens: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_token: object = None  # optional callable(item) run in the engine thread (the HTTP server wakes its loop)

    def cancel(self) -> None:
        self.cancelled.set()

    def _emit(self, item: tuple[int | None, str | None]) -> None:
        self.tokens.put(item)
        if self.on_token is not None:
            self.on_token(item)


class Engine:
    """Owns the model; ``submit`` a :class:`Request` from any thread and read its ``tokens`` queue."""

    def __init__(self, model, max_batch: int = 16, token_delay: float = 0.0, start: bool = True) -> None:
        self.model = model.eval()
        self.context = int(model.config.n_positions)
        self.max_batch = max_batch
        self.token_delay = token_delay  # testing only (koinon serve --token-delay-ms): a slow server to kill
        self._queue: queue.Queue[Request] = queue.Queue()
        self._stop = threading.Event()
        self.active = 0  # requests submitted and not finished (the load a server advertises)
        self._lock = threading.Lock()
        self.batches = 0  # waves run, and the rows in them (for /health and the benchmark)
        self.rows = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="koinon-engine")
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start generating (``start=False`` queues the first requests, so that tests know they form one wave)."""
        self._thread.start()

    def submit(self, request: Request) -> Request:
        if not request.prompt or len(request.prompt) >= self.context:
            raise ValueError(f"a prompt must have 1 to {self.context - 1} tokens")
        with self._lock:
            self.active += 1
        self._queue.put(request)
        return request

    def close(self) -> None:
        self._stop.set()
        self._queue.put(None)  # type: ignore[arg-type]
        self._thread.join(timeout=10)

    # --- the engine thread ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is None:
                return
            wave = [first]
            while len(wave) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                wave.append(more)
            live = [r for r in wave if not r.cancelled.is_set()]
            for r in wave:
                if r.cancelled.is_set():
                    self._finish(r, "cancelled")
            if not live:
                continue
            try:
                self._run(live)
            except Exception as e:  # one bad wave must not stop the server: its requests fail, the next run
                logger.exception("generation failed")
                for r in live:
                    self._finish(r, f"error: {e!r}")

    def _finish(self, request: Request, reason: str) -> None:
        request._emit((None, reason))
        with self._lock:
            self.active -= 1

    @torch.inference_mode()
    def _run(self, wave: list[Request]) -> None:
        self.batches += 1
        self.rows += len(wave)
        width = max(len(r.prompt) for r in wave)
        # how many tokens each row may still produce: its max_tokens, capped by the context
        budget = [min(r.max_tokens, self.context - len(r.prompt)) for r in wave]
        ids = torch.full((len(wave), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(wave), width + max(budget)), dtype=torch.long)  # grows into the tail
        for i, r in enumerate(wave):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        generators = []
        for r in wave:
            g = None
            if r.temperature > 0:
                g = torch.Generator()
                if r.seed is not None:
                    g.manual_seed(r.seed)
                else:
                    g.seed()  # a fresh random seed
            generators.append(g)
        greedy = all(r.temperature <= 0 for r in wave)
        done = [False] * len(wave)
        length = width
        out = self.model(
            input_ids=ids, attention_mask=mask[:, :length], position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache = out.cache
        logits = out.logits[:, -1, :]
        while True:
            if greedy:
                chosen = torch.argmax(logits, dim=-1)
                picks = chosen.tolist()
            else:
                picks = [
                    PAD_ID if done[i] else _choose(logits[i], r.temperature, r.top_p, generators[i])
                    for i, r in enumerate(wave)
                ]
                chosen = torch.tensor(picks, dtype=torch.long)
            for i, r in enumerate(wave):
                if done[i]:
                    continue
                if r.cancelled.is_set():
                    done[i] = True
                    self._finish(r, "cancelled")
                    continue
                token = picks[i]
                if token == EOS_ID:
                    done[i] = True
                    self._finish(r, "stop")
                    continue
                r._emit((token, None))
                budget[i] -= 1
                if budget[i] <= 0:
                    done[i] = True
                    self._finish(r, "length")
            if all(done):
                return
            if self.token_delay:
                time.sleep(self.token_delay)
            length += 1  # the rows that ended go on with a masked-in token nobody reads; the tail is all ones
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=_grow(mask, length),
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
            logits = out.logits[:, -1, :]


def _grow(mask: torch.Tensor, length: int) -> torch.Tensor:
    """The attention mask with one more position attended to by every row."""
    mask[:, length - 1] = 1
    return mask[:, :length]


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Greedy when ``temperature`` is 0; else a sample from the smallest set of tokens with mass ≥ ``top_p``."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the first token is always kept
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


__all__ = ["Engine", "Request"]
