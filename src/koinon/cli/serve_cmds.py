"""``koinon serve`` and ``koinon ask``: the swarm's model behind an OpenAI-compatible API (docs/serving.md)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from koinon.cli.common import add_command, home_option, run_standalone
from koinon.errors import ConfigError, StateError

logger = logging.getLogger("koinon.serve")

EPILOG = {
    "serve": (
        "examples:\n"
        "  koinon serve                                  # the newest release, on http://127.0.0.1:8000/v1\n"
        "  koinon serve --checkpoint release:v1 --port 9000\n"
        "  koinon serve --checkpoint latest --unreleased # a checkpoint no vote released (testing)\n"
        "  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
        '       -d \'{"model": "koinon/v1", "prompt": "def f(x):", "max_tokens": 32, "temperature": 0}\''
    ),
    "ask": (
        "examples:\n"
        "  koinon ask 'def fibonacci(n):'                # servers found through the swarm's DHT\n"
        "  koinon ask 'import os' --server http://127.0.0.1:8000 --max-tokens 64 --temperature 0"
    ),
}


def _dht_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--initial-peers",
        nargs="+",
        default=None,
        metavar="MADDR",
        help="any peer of the swarm (default: the addresses a `koinon start` on this --home printed)",
    )


def register(sub) -> None:
    sp = add_command(
        sub, "serve", "Serve a released checkpoint through an OpenAI-compatible HTTP API.", EPILOG["serve"]
    )
    sp.add_argument(
        "--checkpoint",
        default="latest",
        metavar="ID",
        help="latest (default: the newest release), release:TAG, or a θ hash (8+ hex digits)",
    )
    sp.add_argument("--unreleased", action="store_true", help="serve a checkpoint no passed release names")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    sp.add_argument("--max-concurrency", type=int, default=32, help="requests at once before 429 (default 32)")
    sp.add_argument("--max-batch", type=int, default=16, help="requests generated together (default 16)")
    sp.add_argument(
        "--public-url", default=None, metavar="URL", help="the URL to announce in the DHT (default: from host, port)"
    )
    sp.add_argument("--no-announce", action="store_true", help="do not announce this server in the swarm's DHT")
    _dht_options(sp)
    sp.add_argument("--listen", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR", help=argparse.SUPPRESS)
    # testing only: a slow server, to kill in the middle of an answer (tests/e2e/test_serve.py)
    sp.add_argument("--token-delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    home_option(sp)

    sp = add_command(sub, "ask", "Ask the swarm's model: find a server, stream the answer, fail over.", EPILOG["ask"])
    sp.add_argument("prompt", metavar="PROMPT")
    sp.add_argument("--max-tokens", type=int, default=64, help="bytes to generate (default 64)")
    sp.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    sp.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    sp.add_argument("--seed", type=int, default=None, help="sampling seed")
    sp.add_argument(
        "--server", nargs="+", default=None, metavar="URL", help="use these servers instead of looking in the DHT"
    )
    sp.add_argument("--release", default=None, metavar="TAG", help="the release to ask (default: the newest)")
    sp.add_argument("--unreleased", action="store_true", help="accept servers of any model (no release check)")
    sp.add_argument("--swarm", default=None, metavar="ID", help="swarm id to look for servers of (default: --home's)")
    _dht_options(sp)
    home_option(sp)


def main_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {"serve": cmd_serve, "ask": cmd_ask}


def run(argv: list[str] | None = None) -> int:
    return run_standalone(register, main_commands, argv)


# --- what may be served ---------------------------------------------------------------------------------------------
def releases_of(home: Path) -> tuple[str | None, dict[str, dict]]:
    """(swarm id, passed releases by tag in the order they passed) from the member folder's final ledger."""
    from koinon.cli.gov_cmds import open_view
    from koinon.errors import LedgerError

    try:
        with open_view(home) as view:
            return view.store.swarm_id.hex() if view.store.swarm_id else None, dict(view.state.releases)
    except LedgerError:
        return None, {}


def choose_checkpoint(home: Path, ref: str, unreleased: bool) -> tuple[Path, str | None, str | None]:
    """(checkpoint file, release tag or None, swarm id) for ``koinon serve --checkpoint REF``."""
    from koinon.cli.model_cmds import resolve
    from koinon.store.checkpoint import resolve_checkpoint

    swarm, releases = releases_of(home)
    folder = Path(home) / "checkpoints"
    if ref == "latest" and not unreleased:
        if swarm is None:
            raise StateError(
                f"{home} has no swarm ledger, so no release to serve; give --home of a member, or serve this "
                "folder's newest checkpoint anyway with --unreleased"
            )
        if not releases:
            raise StateError(
                "no release has passed this swarm's governance yet, so there is nothing to serve; propose one "
                "(`koinon propose release --checkpoint HASH --tag v1 …`), or serve a checkpoint anyway with --unreleased"
            )
        ref = f"release:{list(releases)[-1]}"
    if ref.startswith("release:"):
        path, tag = resolve(home, ref)
        return path, tag, swarm
    path = resolve_checkpoint(folder, ref)
    tag = next((t for t, r in reversed(releases.items()) if path.name.startswith(r["checkpoint"][:16])), None)
    if tag is None and not unreleased:
        listed = ", ".join(f"{t} ({r['checkpoint'][:12]})" for t, r in releases.items()) or "none yet"
        raise StateError(
            f"checkpoint {path.name[:16]} is not a release of this swarm (releases: {listed}); serve a release with "
            "--checkpoint release:TAG, or pass --unreleased to serve it anyway"
        )
    return path, tag, swarm


def _initial_peers(args: argparse.Namespace) -> list[str]:
    if args.initial_peers is not None:
        return list(args.initial_peers)
    try:
        return (Path(args.home) / "maddrs").read_text().split()
    except OSError:
        return []


# --- koinon serve ----------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from koinon.cli.model_cmds import _quiet_transformers, load_model
    from koinon.serve.engine import Engine
    from koinon.serve.server import Served, build_app

    for name in ("max_concurrency", "max_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port number")
    _quiet_transformers()
    path, tag, swarm = choose_checkpoint(Path(args.home), args.checkpoint, args.unreleased)
    model, meta = load_model(path)
    served = Served(
        theta=meta["theta_hash"], release=tag, round=meta["round"], swarm=swarm, created=int(path.stat().st_mtime)
    )
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(128)  # accepting from now on: the address printed below already answers
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = sock.getsockname()[:2]
    if not _is_loopback(args.host):
        logger.warning(
            "listening on %s: anyone who can reach this address can use the model (there is no authentication)",
            args.host,
        )
    engine = Engine(model, max_batch=args.max_batch, token_delay=args.token_delay_ms / 1000)
    url = args.public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    print(
        f"serving {served.model_id} (θ {served.theta[:16]}, round {served.round}"
        f"{', release ' + tag if tag else ', UNRELEASED'}) at {url}/v1",
        flush=True,
    )
    announcer, dht = None, None
    if not args.no_announce:
        announcer, dht = _announce(args, served, engine, url)
    app = build_app(served, engine, args.max_concurrency)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        if announcer is not None:
            announcer.stop()
        if dht is not None:
            from koinon.swarm.node import shutdown

            shutdown(None, dht)
        engine.close()
    print("stopped serving", flush=True)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _announce(args, served, engine, url: str):
    """Keep a record in the swarm's DHT: endpoint, model hash, release, live load (refreshed as the load moves)."""
    from koinon.identity import Identity
    from koinon.serve.client import serve_key
    from koinon.swarm.announce import Announcer
    from koinon.swarm.node import quiet_hivemind, start_dht

    if served.swarm is None:
        logger.warning("not announced in a DHT: %s has no swarm ledger (clients need --server %s)", args.home, url)
        return None, None
    quiet_hivemind(bool(getattr(args, "verbose", False)))
    # The server's own DHT identity (not the member's key): a fresh Ed25519 key, made here rather than by p2pd so
    # that we can sign the record with it. p2pd reads the key file once at start; it is deleted right after.
    with tempfile.TemporaryDirectory(prefix="koinon-serve-") as tmp:
        identity = Identity.create(Path(tmp))
        dht = start_dht(identity, args.listen, _initial_peers(args))
    announcer = Announcer(
        dht, serve_key(served.swarm), identity.member_id, kind="servers", required="load", sign=identity.sign
    )
    record = dict(
        url=url,
        model=served.model_id,
        model_hash=served.theta,
        release=served.release,
        capacity=args.max_concurrency,
    )
    announcer.announce(load=0, **record)
    maddrs = [str(m) for m in dht.get_visible_maddrs()]
    print("announced in the swarm's DHT; clients can bootstrap from:", flush=True)
    for m in maddrs[:4]:
        print(f"  koinon ask PROMPT --initial-peers {m}", flush=True)

    def follow_load() -> None:
        last = 0
        while not announcer.wait(1.0):
            if engine.active != last:
                last = engine.active
                announcer.announce(load=last)

    threading.Thread(target=follow_load, daemon=True, name="koinon-serve-load").start()
    return announcer, dht


# --- koinon ask ------------------------------------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    from koinon.serve.client import Client, discover_urls

    if args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    if not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be in [0, 2] and --top-p in (0, 1]")
    swarm, releases = releases_of(Path(args.home))
    allowed: set[str] | None = None
    if not args.unreleased:
        if args.release is not None:
            if args.release not in releases:
                known = ", ".join(releases) or "none yet"
                raise StateError(f"no release {args.release!r} has passed this swarm's governance (releases: {known})")
            allowed = {releases[args.release]["checkpoint"]}
        elif releases:
            allowed = {list(releases.values())[-1]["checkpoint"]}
        else:
            raise StateError(
                f"no release in the ledger of {args.home}, so no model hash to check servers against; pass --home of "
                "a member, or --unreleased to accept any server's model"
            )
    urls = list(args.server or [])
    if not urls:
        swarm = (args.swarm or swarm or "").lower()
        if not swarm:
            raise StateError("no swarm to look for servers in: give --home of a member, --swarm ID, or --server URL")
        peers = _initial_peers(args)
        if not peers:
            raise StateError(
                "no peer to reach the DHT through: give --initial-peers MADDR (any peer or server of the swarm), "
                "or --server URL"
            )
        from koinon.swarm.node import quiet_hivemind, shutdown, start_dht

        quiet_hivemind(bool(getattr(args, "verbose", False)))
        dht = start_dht(None, ["/ip4/127.0.0.1/tcp/0"], peers)
        try:
            urls = discover_urls(dht, swarm)
        finally:
            shutdown(None, dht)
        if not urls:
            raise StateError(f"no server of swarm {swarm[:12]} is announced in the DHT (is a `koinon serve` running?)")
    answer = Client(urls, allowed).complete(
        args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        on_text=lambda t: (sys.stdout.write(t), sys.stdout.flush()),
    )
    sys.stdout.write("\n")
    if len(answer.servers) > 1:
        print(f"(answered by {len(answer.servers)} servers: {' → '.join(answer.servers)})", file=sys.stderr)
    return 0
