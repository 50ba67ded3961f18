"""Late-joiner sync benchmark (issue 6): a new peer fetches the swarm's ledger and a checkpoint from three peers,
next to the raw bytes/s of the same link.

Writes bench/results/sync.json and bench/results/sync.md. Target: the sync runs at ≥ 80 % of the link.

Three *holder* processes each serve the same ledger (``--events`` signed events from bench/ledger_gen.py) and the
same checkpoint (``--model-size``, default ``base``: 11 M parameters, 44 MB) over hivemind's libp2p, exactly as
running peers do (``LedgerService`` anti-entropy; ``koinon/ckpt`` through ``CheckpointServer``). A *joiner* process
with an empty store connects to them, pulls the ledger until it holds every event, then fetches the checkpoint in
chunks from all three in parallel (``fetch_checkpoint``) and checks its hash. Separately, a plain TCP socket sends
``--raw-mb`` MB over the same path: the link's raw rate.

Two links: loopback, and two network namespaces joined by a veth pair shaped to 100 Mbit/s with ``tc tbf`` on both
ends (needs root and iproute2; skipped otherwise, and said so in the results).

The joiner pulls the ledger and the checkpoint at the same time (a late joiner learns the latest θ from the peers'
announcements). The reported rate is payload bytes (event wires; checkpoint content) over wall time, for the
ledger, the model and both together; the model's is the one comparable with a bulk transfer (the ledger's is bound
by signature checks and pure-Python decoding, see bench/results/ledger.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import REPO, command_line, load, src_digest  # noqa: E402

RESULTS = REPO / "bench" / "results"
SWARM = "syncbench"
SOURCES = [REPO / "src/koinon/store/fetch.py", REPO / "src/koinon/ledger/p2p.py", REPO / "bench/sync_bench.py"]


# --- the processes --------------------------------------------------------------------------------------------------
def _service(home: Path, listen: str, initial: list[str], handlers: dict | None = None):
    from koinon.identity import Identity
    from koinon.ledger.node import LedgerNode
    from koinon.ledger.p2p import LedgerService
    from koinon.ledger.store import LedgerStore
    from koinon.swarm import node

    identity, _ = Identity.load_or_create(home)
    dht = node.start_dht(identity, [listen], initial)
    ledger = LedgerNode(LedgerStore(home / "ledger.sqlite"), identity, lambda: int(time.time() * 1000), 1000)
    service = LedgerService(dht, ledger, protocol=f"koinon/ledger/{SWARM}", handlers=handlers)
    service.start()
    return dht, ledger, service


def holder(home: Path, listen: str, initial: list[str]) -> None:
    from koinon.store.fetch import CheckpointServer

    server = CheckpointServer(home / "checkpoints")
    dht, _, _ = _service(home, listen, initial, {f"koinon/ckpt/{SWARM}": server.handle})
    (home / "maddrs").write_text("\n".join(str(m) for m in dht.get_visible_maddrs()) + "\n")
    while True:
        time.sleep(1)


def joiner(home: Path, listen: str, initial: list[str], events: int, theta_hex: str, out: Path) -> None:
    """Pull the ledger and the checkpoint at the same time, as a late joiner that learnt the swarm's latest θ
    from the peers' announcements would; time each, and both together."""
    import threading

    from koinon.store.fetch import fetch_checkpoint

    t0 = time.perf_counter()
    dht, ledger, service = _service(home, listen, initial)
    t_connected = time.perf_counter()
    holders = [m.split("/p2p/")[-1] for m in initial]
    sources = {h: (lambda req, h=h: service.call(h, f"koinon/ckpt/{SWARM}", req, timeout=60)) for h in holders}
    got: dict = {}

    def model() -> None:
        content, _, report = fetch_checkpoint(bytes.fromhex(theta_hex), sources, home / "partial")
        got.update(bytes=len(content), report=report, done=time.perf_counter())

    fetcher = threading.Thread(target=model)
    fetcher.start()
    while ledger.store.count() < events:
        service.kick.set()
        time.sleep(0.02)
        if time.perf_counter() - t_connected > 600:
            raise SystemExit(f"ledger sync stalled at {ledger.store.count()} of {events} events")
    t_ledger = time.perf_counter()
    fetcher.join()
    ledger_bytes = sum(len(e.wire) for e in ledger.store.iter_events())
    out.write_text(
        json.dumps(
            {
                "startup_s": t_connected - t0,
                "ledger_s": t_ledger - t_connected,
                "ledger_events": events,
                "ledger_bytes": ledger_bytes,
                "model_s": got["done"] - t_connected,
                "model_bytes": got["bytes"],
                "total_s": max(t_ledger, got["done"]) - t_connected,
                "chunks_from": got["report"]["from"],
            }
        )
    )
    service.stop()
    dht.shutdown()


def raw_server(addr: str, port: int, mb: int) -> None:
    with socket.create_server((addr, port)) as srv:
        conn, _ = srv.accept()
        with conn:
            block = b"\0" * (1 << 20)
            for _ in range(mb):
                conn.sendall(block)


def raw_client(addr: str, port: int, mb: int, out: Path) -> None:
    deadline = time.time() + 30
    while True:
        try:
            s = socket.create_connection((addr, port))
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    got, t0 = 0, time.perf_counter()
    with s:
        while got < mb << 20:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
    out.write_text(json.dumps({"bytes": got, "seconds": time.perf_counter() - t0}))


# --- the orchestrator ------------------------------------------------------------------------------------------------
def _run(cmd: list[str], wrap: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([*wrap, sys.executable, __file__, *cmd], start_new_session=True, **kw)


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}")
        time.sleep(0.2)
    raise TimeoutError(f"no {path} after {timeout} s")


def prepare(root: Path, events: int, model_size: str) -> tuple[list[Path], str, int]:
    """Three holder homes with the same ledger and checkpoint; returns (homes, θ hex, events)."""
    import torch

    from koinon.config import TrainingConfig
    from koinon.ledger.store import LedgerStore
    from koinon.store.checkpoint import save_checkpoint
    from koinon.training.model import build_model, flat_parameters, theta_hash
    from ledger_gen import build_ledger, make_identities

    wires = build_ledger(make_identities(root / "authors", 3), events).wires
    config = TrainingConfig(model_size=model_size)
    model = build_model(config)
    theta = flat_parameters(model) + 0.01 * torch.randn(flat_parameters(model).numel())
    homes = []
    first = root / "holder-0"
    first.mkdir(parents=True)
    store = LedgerStore(first / "ledger.sqlite")
    for w in wires:
        store.append_wire(w)
    store.close()
    save_checkpoint(first / "checkpoints", model, theta, 1, config)
    homes.append(first)
    for i in (1, 2):
        home = root / f"holder-{i}"
        shutil.copytree(first, home)
        homes.append(home)
    return homes, theta_hash(theta), len(wires)


def measure(root: Path, homes: list[Path], theta: str, events: int, side_a: tuple, side_b: tuple, raw_mb: int) -> dict:
    (wrap_a, addr_a), (wrap_b, addr_b) = side_a, side_b
    procs = []
    try:
        boot = None
        for home in homes:
            (home / "maddrs").unlink(missing_ok=True)
            p = _run(["holder", str(home), f"/ip4/{addr_a}/tcp/0", *([boot] if boot else [])], wrap_a)
            procs.append(p)
            maddrs = _wait_file(home / "maddrs", p, 60).split()
            boot = boot or next(m for m in maddrs if addr_a in m)
        initial = [next(m for m in (h / "maddrs").read_text().split() if addr_a in m) for h in homes]
        out = root / f"joiner-{uuid.uuid4().hex[:6]}.json"
        jhome = root / f"joiner-{uuid.uuid4().hex[:6]}"
        j = _run(
            [
                "joiner",
                str(jhome),
                f"/ip4/{addr_b}/tcp/0",
                "--events",
                str(events),
                "--theta",
                theta,
                "--out",
                str(out),
                *initial,
            ],
            wrap_b,
        )
        procs.append(j)
        if j.wait(900) != 0:
            raise RuntimeError(f"the joiner exited {j.returncode}")
        sync = json.loads(out.read_text())
        port = 40000 + os.getpid() % 20000
        raw_out = root / "raw.json"
        server = _run(["raw-server", addr_a, str(port), str(raw_mb)], wrap_a)
        procs.append(server)
        client = _run(["raw-client", addr_a, str(port), str(raw_mb), str(raw_out)], wrap_b)
        procs.append(client)
        client.wait(600)
        raw = json.loads(raw_out.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait()
    link = raw["bytes"] / raw["seconds"]
    total_bytes = sync["ledger_bytes"] + sync["model_bytes"]
    total_s = sync["total_s"]
    return {
        "raw_bytes_per_s": round(link),
        "ledger": {
            "events": sync["ledger_events"],
            "bytes": sync["ledger_bytes"],
            "seconds": round(sync["ledger_s"], 3),
            "bytes_per_s": round(sync["ledger_bytes"] / sync["ledger_s"]),
            "events_per_s": round(sync["ledger_events"] / sync["ledger_s"]),
        },
        "model": {
            "bytes": sync["model_bytes"],
            "seconds": round(sync["model_s"], 3),
            "bytes_per_s": round(sync["model_bytes"] / sync["model_s"]),
            "share_of_link": round(sync["model_bytes"] / sync["model_s"] / link, 3),
            "chunks_from": sync["chunks_from"],
        },
        "total": {
            "bytes": total_bytes,
            "seconds": round(total_s, 3),
            "bytes_per_s": round(total_bytes / total_s),
            "share_of_link": round(total_bytes / total_s / link, 3),
        },
        "startup_s": round(sync["startup_s"], 2),
    }


def shaped_link(rate: str):
    """Two namespaces joined by a veth pair, both ends shaped with tc tbf; yields the two sides, or None."""
    if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
        return None, "needs root, iproute2 and tc"
    tag = uuid.uuid4().hex[:6]
    a, b = f"ksync-a-{tag}", f"ksync-b-{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("link", "add", f"sa-{tag}", "type", "veth", "peer", "name", f"sb-{tag}")
        for ns, dev, addr in ((a, f"sa-{tag}", "10.214.1.1"), (b, f"sb-{tag}", "10.214.1.2")):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "256kb",
                    "latency",
                    "50ms",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
    except subprocess.CalledProcessError as e:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        return None, f"could not create the shaped link: {e.stderr.strip()}"
    return ((["ip", "netns", "exec", a], "10.214.1.1"), (["ip", "netns", "exec", b], "10.214.1.2"), (a, b)), ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("holder", "joiner", "raw-server", "raw-client"):
        return _role(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--model-size", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--raw-mb", type=int, default=64)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "CRITICAL")
    started = datetime.now(UTC)
    root = Path(tempfile.mkdtemp(prefix="koinon-sync-"))
    results: dict = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": {"cpus": os.cpu_count(), "load_start": load()},
        "sources": src_digest(SOURCES),
        "settings": {"events": args.events, "model_size": args.model_size, "rate": args.rate, "raw_mb": args.raw_mb},
        "links": {},
    }
    try:
        homes, theta, events = prepare(root, args.events, args.model_size)
        print(f"prepared {events} events and a {args.model_size} checkpoint", flush=True)
        results["links"]["loopback"] = measure(
            root, homes, theta, events, ([], "127.0.0.1"), ([], "127.0.0.1"), args.raw_mb * 4
        )
        print("loopback:", json.dumps(results["links"]["loopback"]), flush=True)
        sides, why = shaped_link(args.rate)
        if sides is None:
            results["links"]["veth"] = {"skipped": why}
        else:
            side_a, side_b, namespaces = sides
            try:
                results["links"]["veth"] = measure(root, homes, theta, events, side_a, side_b, args.raw_mb)
            finally:
                for ns in namespaces:
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        print("veth:", json.dumps(results["links"]["veth"]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["machine"]["load_end"] = load()
    veth = results["links"].get("veth", {})
    results["target"] = {
        "model_share_of_link_veth": veth.get("model", {}).get("share_of_link"),
        "total_share_of_link_veth": veth.get("total", {}).get("share_of_link"),
        "target": 0.8,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "sync.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / "sync.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def _role(argv: list[str]) -> int:
    role = argv[0]
    if role == "holder":
        holder(Path(argv[1]), argv[2], argv[3:])
    elif role == "joiner":
        p = argparse.ArgumentParser()
        p.add_argument("home", type=Path)
        p.add_argument("listen")
        p.add_argument("initial", nargs="+")
        p.add_argument("--events", type=int)
        p.add_argument("--theta")
        p.add_argument("--out", type=Path)
        a = p.parse_args(argv[1:])
        joiner(a.home, a.listen, a.initial, a.events, a.theta, a.out)
        os._exit(0)  # the result is written; skip the event loops' noisy teardown
    elif role == "raw-server":
        raw_server(argv[1], int(argv[2]), int(argv[3]))
    else:
        raw_client(argv[1], int(argv[2]), int(argv[3]), Path(argv[4]))
    return 0


def markdown(res: dict) -> str:
    lines = [
        f"# Late-joiner sync benchmark — {res['date']}",
        "",
        f"`{res['command']}` · {res['machine']['cpus']} CPUs · load {res['machine']['load_start']} → "
        f"{res['machine'].get('load_end')} · sources {res['sources']['all']}",
        "",
        f"{res['settings']['events']:,} ledger events and a {res['settings']['model_size']} checkpoint, from three "
        "peers to a new one.",
        "",
        "| link | raw TCP | ledger | model (3 peers in parallel) | model / link | ledger + model / link |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["links"].items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {name} | {r['raw_bytes_per_s'] / 1e6:.1f} MB/s | {r['ledger']['events_per_s']:,} events/s "
            f"({r['ledger']['bytes_per_s'] / 1e6:.2f} MB/s) | {r['model']['bytes'] / 1e6:.1f} MB in "
            f"{r['model']['seconds']:.2f} s = {r['model']['bytes_per_s'] / 1e6:.1f} MB/s | "
            f"{r['model']['share_of_link']:.0%} | {r['total']['share_of_link']:.0%} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
