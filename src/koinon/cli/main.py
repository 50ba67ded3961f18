"""``koinon``: the command-line interface. Every command's ``--help`` shows an example."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from koinon import __version__
from koinon.aggregation import REDUCERS
from koinon.cli import gov_cmds, ledger_cmds, model_cmds, serve_cmds
from koinon.cli.common import add_command, default_home
from koinon.errors import KoinonError
from koinon.swarm.attacks import ATTACKS

LEAVE_WARNING_S = 20.0  # a peer still leaving after this long prints where it is stuck


def _report_slow_exit(after: float) -> None:
    """Leaving normally takes a few seconds (finish the step, record the leave, stop the averager and the DHT).
    If it takes longer, say so and print every thread's stack: a hang report users can file as it is."""
    import faulthandler
    import time

    time.sleep(after)
    logging.getLogger("koinon").warning("still leaving after %.0f s; where each thread is:", after)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


EPILOG = {
    "id": "example:\n  koinon id --home ~/.koinon",
    "start": (
        "examples:\n"
        "  koinon start                                   # first peer, trains on the Python standard library\n"
        "  koinon start --data ~/corpus --initial-peers /ip4/203.0.113.5/tcp/31337/p2p/12D3KooW...\n"
        "  koinon start --listen /ip4/0.0.0.0/tcp/31337 --announce /ip4/203.0.113.5/tcp/31337"
    ),
    "demo": "examples:\n  koinon demo\n  koinon demo --peers 4 --minutes 10 --summary-json summary.json\n"
    "  koinon demo --attack sign_flip              # 3 honest peers and one Byzantine peer-3",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="koinon",
        description="Train, verify, govern and serve AI models together over a peer-to-peer network.",
        epilog="examples:\n  koinon demo                 # a 3-peer swarm on this machine for 3 minutes\n"
        "  koinon id                   # create your member key\n"
        "  koinon start --help         # run a peer, join others\n"
        "  koinon credit               # each member's verified credit and share",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"koinon {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show detailed logs and tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_text, EPILOG.get(name))

    sp = add("id", "Create this member's Ed25519 identity, or show it if it exists.")
    sp.add_argument(
        "--home", type=Path, default=default_home(), help="member folder (default: $KOINON_HOME or ~/.koinon)"
    )

    sp = add("start", "Run one peer: join (or found) a swarm and train the shared model until Ctrl-C.")
    _add_peer_arguments(sp)

    sp = add("demo", "Run a local swarm of separate peer processes on 127.0.0.1 for a few minutes, then summarise.")
    sp.add_argument("--peers", type=int, default=3, help="number of peer processes (default 3)")
    sp.add_argument("--minutes", type=float, default=3.0, help="training time in minutes (default 3)")
    sp.add_argument("--workdir", type=Path, default=None, help="where peer homes go (default: a new folder in runs/)")
    sp.add_argument("--summary-json", type=Path, default=None, help="also write the end summary as JSON here")
    sp.add_argument(
        "--dashboard",
        default="127.0.0.1:0",
        metavar="[HOST:]PORT",
        help="where peer-0 serves the web dashboard (default 127.0.0.1 and a free port; `off`: none)",
    )
    sp.add_argument("--data", type=Path, nargs="+", default=None, help="text files or folders (default: Python stdlib)")
    sp.add_argument("--inner-steps", type=int, default=None, help="H, inner steps per round (default 50)")
    sp.add_argument("--model-size", default=None, choices=["tiny", "small", "base"], help="default tiny")
    sp.add_argument("--compression", default=None, choices=["fp16", "int8", "none"], help="default fp16")
    sp.add_argument(
        "--reducer", default=None, choices=REDUCERS, help="how pseudo-gradients are aggregated (default centered_clip)"
    )
    sp.add_argument(
        "--attack",
        default=None,
        choices=ATTACKS,
        metavar="KIND",
        help=f"add one more peer that sends Byzantine pseudo-gradients ({', '.join(ATTACKS)}); the summary says "
        "whether the reducer caught or out-voted it",
    )
    ledger_cmds.register(sub)
    gov_cmds.register(sub)
    model_cmds.register(sub)
    serve_cmds.register(sub)
    return p


def _add_peer_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--home", type=Path, default=default_home(), help="member folder (default: $KOINON_HOME or ~/.koinon)"
    )
    sp.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=None,
        help="text files or folders to train on (default: the Python standard library's .py files)",
    )
    sp.add_argument(
        "--initial-peers",
        nargs="+",
        default=[],
        metavar="MADDR",
        help="multiaddr of any running peer (printed when it starts); omit to found a new swarm",
    )
    sp.add_argument(
        "--listen",
        nargs="+",
        default=["/ip4/0.0.0.0/tcp/0"],
        metavar="MADDR",
        help="addresses to listen on (default /ip4/0.0.0.0/tcp/0: all interfaces, a free port)",
    )
    sp.add_argument(
        "--announce",
        nargs="+",
        default=[],
        metavar="MADDR",
        help="public addresses to tell others (behind NAT/port forwarding)",
    )
    sp.add_argument(
        "--swarm",
        default="koinon",
        metavar="NAME|ID",
        help="swarm network name (peers with another name never mix; default koinon), or a swarm id (64 hex, "
        "printed by `koinon init` and every peer): refuse to join a swarm whose charter has another id",
    )
    sp.add_argument(
        "--charter",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="found a new swarm from this charter (when this home has no ledger and no --initial-peers are given; "
        "`koinon init` does the same without starting); default: the example charter with the flags below",
    )
    sp.add_argument(
        "--swarm-id",
        default=None,
        metavar="HEX",
        help="refuse to join unless the initial peers' ledger has this swarm id (printed by every peer)",
    )
    sp.add_argument("--inner-steps", type=int, default=None, help="H: inner AdamW steps per round (default 50)")
    sp.add_argument("--outer-lr", type=float, default=None, help="outer Nesterov SGD learning rate (default 0.7)")
    sp.add_argument("--batch-size", type=int, default=None, help="sequences per inner step (default 8)")
    sp.add_argument("--seq-len", type=int, default=None, help="tokens (bytes) per sequence (default 128)")
    sp.add_argument("--model-size", default=None, choices=["tiny", "small", "base"], help="default tiny (0.46 M)")
    sp.add_argument(
        "--compression",
        default=None,
        choices=["fp16", "int8", "none"],
        help="pseudo-gradient encoding on the wire (default fp16)",
    )
    sp.add_argument(
        "--reducer",
        default=None,
        choices=REDUCERS,
        help="how each part of the pseudo-gradients is aggregated: a Byzantine-robust reducer or the plain mean "
        "(default centered_clip; docs/training.md)",
    )
    sp.add_argument(
        "--dashboard",
        default=None,
        metavar="[HOST:]PORT",
        help="serve the web dashboard from this peer (host 127.0.0.1 unless given; docs/dashboard.md)",
    )
    sp.add_argument(
        "--min-contributors",
        type=int,
        default=None,
        help="founding without --charter: a round's result becomes the swarm's θ only with at least this many "
        "contributors (default 3; below 3 one Byzantine peer can no longer be out-voted; docs/training.md §2)",
    )
    sp.add_argument(
        "--slowdown",
        type=float,
        default=1.0,
        help="TESTING TOOL: make every inner step this many times slower (a slow machine, for the benchmarks)",
    )
    sp.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="stop once the swarm's θ has this many certified rounds (default: run until Ctrl-C)",
    )
    sp.add_argument("--wait-for-peers", type=int, default=1, help="before round 1, wait until N peers are up")
    sp.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    sp.add_argument("--matchmaking-time", type=float, default=2.0, help="seconds to gather a group (default 2)")
    sp.add_argument("--averaging-timeout", type=float, default=30.0, help="seconds before a hung round is dropped")
    sp.add_argument(
        "--attack",
        default=None,
        choices=ATTACKS,
        metavar="KIND",
        help=f"TESTING TOOL: send Byzantine pseudo-gradients on purpose, one of {', '.join(ATTACKS)} "
        "(docs/training.md, 'Testing tools: --attack')",
    )


def _training_config(args: argparse.Namespace):
    from koinon.config import TrainingConfig

    overrides = {
        "inner_steps": getattr(args, "inner_steps", None),
        "outer_lr": getattr(args, "outer_lr", None),
        "batch_size": getattr(args, "batch_size", None),
        "seq_len": getattr(args, "seq_len", None),
        "model_size": getattr(args, "model_size", None),
        "compression": getattr(args, "compression", None),
        "reducer": getattr(args, "reducer", None),
    }
    return TrainingConfig(**{k: v for k, v in overrides.items() if v is not None})


def cmd_id(args: argparse.Namespace) -> int:
    from koinon.identity import Identity

    identity, created = Identity.load_or_create(args.home)
    print(f"{'created' if created else 'member'} {identity.member_id}")
    print(f"key file {identity.path} (mode {oct(identity.path.stat().st_mode & 0o777)})")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    from koinon.swarm.peer import Peer, PeerOptions

    swarm_name, swarm_id = args.swarm, args.swarm_id
    if len(args.swarm) == 64 and all(c in "0123456789abcdefABCDEF" for c in args.swarm):
        swarm_name, swarm_id = "koinon", args.swarm.lower()
    charter = None
    if args.charter is not None:
        from koinon.governance.charter import load_charter
        from koinon.identity import Identity

        identity, _ = Identity.load_or_create(args.home)
        charter = load_charter(args.charter, identity.member_id)
    options = PeerOptions(
        home=args.home,
        data=args.data,
        initial_peers=args.initial_peers,
        listen=args.listen,
        announce=args.announce,
        config=_training_config(args),
        swarm=swarm_name,
        charter=charter,
        max_rounds=args.rounds,
        wait_for_peers=args.wait_for_peers,
        threads=args.threads,
        matchmaking_time=args.matchmaking_time,
        averaging_timeout=args.averaging_timeout,
        attack=args.attack,
        swarm_id=swarm_id,
        min_contributors=args.min_contributors,
        slowdown=args.slowdown,
    )
    peer = Peer(options)

    def stop(signum, _frame):
        log = logging.getLogger("koinon")
        if peer.stop_event.is_set():  # a second Ctrl-C: the user does not want to wait (the ledger is SQLite in
            log.warning("received %s again: leaving now", signal.Signals(signum).name)  # WAL mode; checkpoints
            os._exit(130)  # are written to a temporary file and renamed: neither is left half-written)
        log.info("received %s: leaving after the current step (again to leave at once)", signal.Signals(signum).name)
        peer.stop_event.set()
        threading.Thread(target=_report_slow_exit, args=(LEAVE_WARNING_S,), daemon=True).start()

    try:
        maddrs = peer.start()
        # installed only now: hivemind's forked children must keep the default handlers, or SIGTERM from
        # their own shutdown path would be swallowed and they would outlive us
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        (Path(args.home) / "maddrs").write_text("\n".join(maddrs) + "\n")
        print(f"member {peer.member}", flush=True)
        if args.dashboard is not None:
            from koinon.dashboard.app import start_dashboard

            print(f"dashboard {start_dashboard(Path(args.home), args.dashboard, peer)}", flush=True)
            print(
                f"  (the token also lives in {Path(args.home) / 'dashboard.token'}, readable by you only)", flush=True
            )
        if peer.swarm_id:
            print(f"swarm  {peer.swarm_id}", flush=True)
        print("others can join with:", flush=True)
        for m in maddrs:
            print(f"  koinon start --initial-peers {m}", flush=True)
        peer.run()
    finally:
        peer.close()
    print(f"left the swarm after round {peer.round}", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from koinon.cli.demo import run_demo

    return run_demo(args)


def command_table() -> dict:
    """Every command's handler by name (the dashboard runs them too: koinon.dashboard.bridge)."""
    return {
        "id": cmd_id,
        "start": cmd_start,
        "demo": cmd_demo,
        **ledger_cmds.main_commands(),
        **gov_cmds.main_commands(),
        **model_cmds.main_commands(),
        **serve_cmds.main_commands(),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    if args.command in (
        "start",
        "demo",
        "serve",
        "ask",
    ):  # importing hivemind takes 1–7 s: only the commands that run peers
        from koinon.swarm.node import quiet_hivemind

        quiet_hivemind(verbose)
    else:
        os.environ.setdefault("HIVEMIND_LOGLEVEL", "INFO" if verbose else "CRITICAL")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s" if verbose else "%(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for noisy in ("hivemind", "transformers", "matplotlib", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    commands = command_table()
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        return commands[args.command](args)
    except KoinonError as e:
        if verbose:
            raise
        print(f"koinon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
