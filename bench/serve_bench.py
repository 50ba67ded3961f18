"""Serving benchmark (issue 8): ``koinon serve`` next to direct ``transformers`` generation of the same checkpoint.

Writes bench/results/serve.json and bench/results/serve.md. Targets: tokens/s through the server ≥ 90 % of direct
``generate``; failover < 1 s.

- **Direct**: ``model.generate`` (greedy, KV cache) in this process; tokens/s over ``--tokens`` new tokens, and the
  time to first token (a ``generate`` of one token: the prompt's forward pass and one choice).
- **Server, one client**: a real ``koinon serve`` process on loopback, one streaming request at a time through the
  stdlib HTTP client; tokens/s (completion tokens over the request's wall time) and time to the first streamed
  token.
- **Concurrency**: 1, 4 and 16 client threads each sending streaming requests for ``--seconds`` seconds; aggregate
  completion tokens/s, and the mean time to first token (requests that arrive during a batch wait for it).
- **Failover**: two servers (each slowed to 20 ms per token so that the kill lands mid-answer); the client streams
  ``--tokens`` tokens, the server answering is SIGKILLed after 0.5 s, and the client's measured time from the
  failure to the next server's first token is the failover time.

Direct and one-client server runs alternate, ``--repeats`` each; medians are reported. The model is ``--model-size`` (default ``base``, 11 M
parameters) with θ₀ plus noise (speed does not depend on training).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, command_line, load, src_digest  # noqa: E402

PROMPT = "def fibonacci(n):"


def start_server(home: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "koinon", "serve", "--home", str(home), "--port", "0", "--unreleased"]
    proc = subprocess.Popen(
        [*cmd, "--no-announce", *extra],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(r"at (http://\S+)/v1", log.read_text(errors="replace"))
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"koinon serve exited:\n{log.read_text()}")
        time.sleep(0.2)
    raise SystemExit("koinon serve did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stream(url: str, model: str, tokens: int) -> tuple[float, float, int]:
    """One streaming request: (seconds to the first token, seconds in all, completion tokens)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first, count = None, 0
    for line in resp:
        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
            continue
        for choice in json.loads(line[5:])["choices"]:
            count += len(choice.get("token_ids", []))
            if first is None and choice.get("token_ids"):
                first = time.perf_counter() - t0
    conn.close()
    return first or float("nan"), time.perf_counter() - t0, count


class Direct:
    """``transformers`` generation of the same checkpoint in this process."""

    def __init__(self, model) -> None:
        import torch

        self.model = model
        self.ids = torch.tensor([[b + 3 for b in PROMPT.encode()]])
        self.run(4)  # warm-up

    def run(self, n: int) -> tuple[float, int]:
        import torch

        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                self.ids,
                attention_mask=torch.ones_like(self.ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
        return time.perf_counter() - t0, out.shape[1] - self.ids.shape[1]


def concurrent(url: str, model: str, clients: int, tokens: int, seconds: float) -> dict:
    done: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < stop_at:
            result = stream(url, model, tokens)
            with lock:
                done.append(result)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(done),
        "tokens_per_s": round(sum(n for _, _, n in done) / wall, 1),
        "mean_ttft_ms": round(1000 * statistics.mean(f for f, _, _ in done), 1),
    }


def failover(home: Path, root: Path, tokens: int) -> dict:
    from koinon.serve.client import Client, Server, probe

    servers = [start_server(home, root / f"fo-{i}.log", "--token-delay-ms", "20") for i in range(2)]
    try:
        client = Client([u for _, u in servers])

        def killer() -> None:
            """0.5 s into the answer, SIGKILL the server answering it (the one whose /health shows a load)."""
            time.sleep(0.5)
            for proc, url in servers:
                if (probe(url) or Server(url)).load > 0:
                    os.killpg(proc.pid, signal.SIGKILL)
                    return

        threading.Thread(target=killer, daemon=True).start()
        answer = client.complete(PROMPT, max_tokens=tokens, temperature=0)
        return {
            "servers_used": len(answer.servers),
            "failover_ms": [round(1000 * s, 1) for s in answer.failover_s],
            "tokens": len(answer.token_ids),
            "complete": len(answer.token_ids) == tokens or answer.finish_reason == "stop",
        }
    finally:
        for proc, _ in servers:
            stop(proc)


def markdown(r: dict) -> str:
    d, s = r["direct"], r["server"]
    lines = [
        "# Serving benchmark",
        "",
        f"{r['date']} · {r['machine']['cpus']} CPUs · model {r['model_size']} ({r['parameters'] / 1e6:.1f} M "
        f"parameters) · {r['tokens']} tokens per request · `{r['command']}`",
        "",
        "| | tokens/s | time to first token |",
        "|---|---:|---:|",
        f"| `transformers` generate | {d['tokens_per_s']} | {d['ttft_ms']} ms |",
        f"| `koinon serve`, 1 client (HTTP, streamed) | {s['tokens_per_s']} | {s['ttft_ms']} ms |",
        f"| ratio | **{r['ratio']:.0%}** (target ≥ 90 %) | |",
        "",
        "| concurrent clients | requests | tokens/s (all clients) | mean time to first token |",
        "|---:|---:|---:|---:|",
    ]
    for c in r["concurrency"]:
        lines.append(f"| {c['clients']} | {c['requests']} | {c['tokens_per_s']} | {c['mean_ttft_ms']} ms |")
    f = r["failover"]
    lines += [
        "",
        f"Failover: the answering server SIGKILLed mid-answer; the client finished on {f['servers_used']} servers "
        f"({f['tokens']} tokens, complete: {f['complete']}); failure → next server's first token: "
        f"{', '.join(f'{x} ms' for x in f['failover_ms']) or 'n/a'} (target < 1000 ms).",
        "",
        f"Load average at start / end: {r['machine']['load_start']} / {r['machine']['load_end']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-size", default="base")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()

    import torch

    from koinon.cli.model_cmds import load_model
    from koinon.config import TrainingConfig
    from koinon.store.checkpoint import save_checkpoint
    from koinon.training.model import build_model, flat_parameters

    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": {"cpus": os.cpu_count(), "load_start": load()},
        "model_size": args.model_size,
        "tokens": args.tokens,
        "sources": src_digest([REPO / "src/koinon/serve/engine.py", REPO / "src/koinon/serve/server.py"]),
    }
    with tempfile.TemporaryDirectory(prefix="koinon-serve-bench-") as tmp:
        root = Path(tmp)
        config = TrainingConfig(model_size=args.model_size)
        model = build_model(config)
        torch.manual_seed(0)
        theta = flat_parameters(model) + 0.02 * torch.randn(flat_parameters(model).shape)
        path = save_checkpoint(root / "home" / "checkpoints", model, theta, 1, config)
        model, _ = load_model(path)  # exactly what the server loads
        results["parameters"] = int(theta.numel())
        proc, url = start_server(root / "home", root / "serve.log")
        try:
            model_id = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["id"]
            stream(url, model_id, 4)  # warm-up
            local = Direct(model)
            # interleaved, so that both see the same machine (load drifts on a shared 2-core box)
            rates: dict[str, list[float]] = {"direct": [], "server": []}
            ttft: dict[str, list[float]] = {"direct": [], "server": []}
            for _ in range(args.repeats):
                seconds, n = local.run(args.tokens)
                rates["direct"].append(n / seconds)
                ttft["direct"].append(local.run(1)[0])
                first, seconds, n = stream(url, model_id, args.tokens)
                rates["server"].append(n / seconds)
                ttft["server"].append(first)
            for side in ("direct", "server"):
                results[side] = {
                    "tokens_per_s": round(statistics.median(rates[side]), 1),
                    "ttft_ms": round(1000 * statistics.median(ttft[side]), 2),
                }
                print(f"{side}:", results[side], flush=True)
            results["concurrency"] = []
            for clients in (1, 4, 16):
                results["concurrency"].append(concurrent(url, model_id, clients, args.tokens, args.seconds))
                print("concurrency:", results["concurrency"][-1], flush=True)
        finally:
            stop(proc)
        results["failover"] = failover(root / "home", root, args.tokens)
        print("failover:", results["failover"], flush=True)
    results["ratio"] = results["server"]["tokens_per_s"] / results["direct"]["tokens_per_s"]
    results["machine"]["load_end"] = load()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / "serve.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
