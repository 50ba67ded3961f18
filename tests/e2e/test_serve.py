"""`koinon serve` and `koinon ask` as separate processes over real HTTP on loopback (issue 8): the official
``openai`` client, greedy output identical to ``transformers``, OpenAI-style errors, 429, the release check, and
failover when a server is killed in the middle of a streamed answer (servers found through the DHT)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.store.checkpoint import save_checkpoint
from koinon.training.model import build_model, flat_parameters
from tests.e2e.released import make_released
from tests.e2e.test_gov_cli import one_error_line

pytestmark = pytest.mark.slow


class ServerProcess:
    def __init__(self, home: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self.log = open(log, "ab")
        cmd = [sys.executable, "-m", "koinon", "serve", "--home", str(home), "--port", "0"]
        cmd += ["--listen", "/ip4/127.0.0.1/tcp/0", *extra]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, announced: bool, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if re.search(r"at (http://\S+)/v1", text) and (not announced or "--initial-peers /ip4/127" in text):
                return
            assert self.proc.poll() is None, f"koinon serve exited {self.proc.returncode}:\n{text}"
            time.sleep(0.2)
        raise AssertionError(f"koinon serve did not start:\n{self.text()}")

    @property
    def url(self) -> str:
        return re.search(r"at (http://\S+)/v1", self.text()).group(1)

    @property
    def dht(self) -> str:
        return re.search(r"--initial-peers (/ip4/127\S+)", self.text()).group(1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return None
        self.log.close()
        return self.proc.returncode


def call(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, dict]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}, dict(resp.getheaders())


def greedy(model, text: str, n: int) -> str:
    ids = torch.tensor([[b + 3 for b in text.encode()]])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
        )
    new = out[0, ids.shape[1] :].tolist()
    if 1 in new:  # the end-of-text token ends the answer
        new = new[: new.index(1)]
    return bytes(i - 3 for i in new if 3 <= i < 259).decode(errors="replace")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A released model (v1), and an unreleased checkpoint beside it; servers: `fast` (not announced) and a slow
    pair (`--token-delay-ms`, so that an answer lasts seconds) announced in a DHT that the first of them starts."""
    released = make_released(tmp_path_factory.mktemp("serve"))
    home, root = released["home"], released["root"]
    config = TrainingConfig(inner_steps=50)
    other = build_model(config)
    released["unreleased"] = save_checkpoint(
        home / "checkpoints", other, flat_parameters(other), 9, config, update_latest=False
    ).name[:16]
    servers = {"fast": ServerProcess(home, root / "fast.log", "--no-announce")}
    servers["slow-a"] = ServerProcess(home, root / "slow-a.log", "--token-delay-ms", "40", "--max-concurrency", "1")
    try:
        servers["fast"].wait_ready(announced=False)
        servers["slow-a"].wait_ready(announced=True)
        servers["slow-b"] = ServerProcess(
            home, root / "slow-b.log", "--token-delay-ms", "40", "--initial-peers", servers["slow-a"].dht
        )
        servers["slow-b"].wait_ready(announced=True)
        yield released, servers
    finally:
        codes = {name: s.stop() for name, s in servers.items()}
        print("exit codes", codes)


def test_openai_client_plain_and_streaming_matches_transformers(setup):
    import openai

    released, servers = setup
    client = openai.OpenAI(base_url=servers["fast"].url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["koinon/v1"]
    want = greedy(released["model"], "def f(x):", 40)
    plain = client.completions.create(model="koinon/v1", prompt="def f(x):", max_tokens=40, temperature=0)
    assert plain.choices[0].text == want
    assert plain.system_fingerprint == f"koinon-{released['theta']}"
    assert plain.usage.prompt_tokens == 9 and plain.usage.completion_tokens == len(want.encode()) or want.count("�")
    chunks = list(
        client.completions.create(model="koinon/v1", prompt="def f(x):", max_tokens=40, temperature=0, stream=True)
    )
    assert len(chunks) > 2, "the answer did not come as a stream"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    status, health, _ = call(servers["fast"].url, "GET", "/health")
    assert status == 200 and health["model_hash"] == released["theta"] and health["release"] == "v1"


BAD = [
    (b"{not json", 400, None),
    (b'["a list"]', 400, None),
    (b'{"model": "gpt-4", "prompt": "x"}', 404, "model_not_found"),
    (json.dumps({"model": "koinon/v1", "prompt": "x" * 300}).encode(), 400, "context_length_exceeded"),
    (b'{"model": "koinon/v1", "prompt": "x", "max_tokens": 1000}', 400, "invalid_value"),
    (b'{"model": "koinon/v1", "prompt": "x", "max_tokens": -1}', 400, "invalid_value"),
    (b'{"model": "koinon/v1", "prompt": "x", "max_tokens": "ten"}', 400, "invalid_type"),
    (b'{"model": "koinon/v1", "prompt": {"text": "x"}}', 400, "invalid_type"),
    (b'{"model": "koinon/v1", "prompt": "x", "temperature": "hot"}', 400, "invalid_type"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD)
def test_bad_input_gets_an_openai_error_and_the_server_goes_on(setup, body, status, code):
    _, servers = setup
    url = servers["fast"].url
    got, answer, _ = call(url, "POST", "/v1/completions", body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["code"] == code
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    good = json.dumps({"model": "koinon/v1", "prompt": "ok", "max_tokens": 3, "temperature": 0}).encode()
    got, answer, _ = call(url, "POST", "/v1/completions", good)
    assert got == 200 and answer["usage"]["completion_tokens"] >= 1


def test_a_server_at_its_concurrency_limit_answers_429(setup):
    _, servers = setup
    url = servers["slow-a"].url  # --max-concurrency 1; 40 ms per token: 60 tokens take ≈ 2.4 s
    body = json.dumps({"model": "koinon/v1", "prompt": "busy", "max_tokens": 60, "temperature": 0, "stream": True})
    parts = urllib.parse.urlsplit(url)
    first = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    first.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = first.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data:")  # the first is being answered
    status, answer, headers = call(url, "POST", "/v1/completions", body.encode())
    assert status == 429 and answer["error"]["code"] == "rate_limit_exceeded" and headers.get("retry-after") == "1"
    rest = resp.read()
    first.close()
    assert rest.rstrip().endswith(b"data: [DONE]")
    deadline = time.monotonic() + 10
    while call(url, "GET", "/health")[1]["load"] and time.monotonic() < deadline:
        time.sleep(0.1)
    plain = json.dumps({"model": "koinon/v1", "prompt": "free?", "max_tokens": 3, "temperature": 0}).encode()
    status, answer, _ = call(url, "POST", "/v1/completions", plain)
    assert status == 200 and answer["choices"][0]["finish_reason"], "the server did not recover after the busy one"


def test_ask_fails_over_when_its_server_is_killed_mid_answer(setup):
    released, servers = setup
    home = released["home"]
    slow = {name: servers[name] for name in ("slow-a", "slow-b")}
    ask = subprocess.Popen(
        [sys.executable, "-m", "koinon", "ask", "def f(x):", "--max-tokens", "80", "--home", str(home)]
        + ["--initial-peers", slow["slow-b"].dht],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and ask.poll() is None:
        for name, s in slow.items():
            try:
                if call(s.url, "GET", "/health")[1]["load"] > 0:
                    victim = name
            except OSError:
                pass
        time.sleep(0.05)
    assert victim is not None, f"no server started answering: {ask.communicate()}"
    time.sleep(0.6)  # some tokens out (40 ms each), most still to come
    os.killpg(slow[victim].proc.pid, signal.SIGKILL)
    out, err = ask.communicate(timeout=60)
    assert ask.returncode == 0, err
    assert out == greedy(released["model"], "def f(x):", 80) + "\n", err
    assert "answered by 2 servers" in err and "failed after" in err, err


def test_serve_refuses_a_checkpoint_no_release_names(setup, cli):
    released, _ = setup
    code, _, err = cli("serve", "--checkpoint", released["unreleased"], "--home", released["home"], "--port", "0")
    one_error_line(code, err, "not a release of this swarm")
    code, _, err = cli("serve", "--checkpoint", "release:v9", "--home", released["home"], "--port", "0")
    one_error_line(code, err, "no release 'v9'")
