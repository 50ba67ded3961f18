"""``koinon init``, ``propose``, ``vote``, ``delegate``, ``proposals``, ``proposal``, ``charter`` and ``credit``: found
a swarm from a charter, govern it and see each member's verified credit from the command line (docs/governance.md).

``register(sub)`` adds the commands to ``koinon``'s subparsers and :func:`main_commands` maps their names to
handlers; :func:`run` is a stand-alone ``koinon`` with only these commands (``python -m koinon.cli.gov_cmds``).

Every command reads the **final** governance state (``Chain.final_governance()``): what every peer that holds the
same final cuts computes. Events not in a final cut yet (a proposal just made, a vote just cast) are counted and
mentioned, never shown as if they had taken effect. The writing commands check what they are about to sign
against that state first (a bad proposal is a clear error and nothing is appended), then append through
``ledger/outbox.py``: directly when no peer runs on the home, through the running peer's outbox otherwise, so a
member's feed keeps a single writer.

Times are counted in ledger cuts; the wall-clock estimates assume one cut per epoch, which a swarm reaches only
while it is busy (a cut is made when there are new events to finalise).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from koinon.cli.common import add_command, home_option, run_standalone
from koinon.errors import ConfigError, GovernanceError, LedgerError
from koinon.verification.trust import credit_dict

if TYPE_CHECKING:  # imported lazily at run time: `koinon --help` stays fast
    from koinon.governance.state import GovState
    from koinon.ledger.cuts import Chain
    from koinon.ledger.event import Event
    from koinon.ledger.store import LedgerStore

LEDGER_FILE = "ledger.sqlite"
GOV_KINDS = ("proposal", "vote", "delegate", "cancel")
OPEN_STATES = ("pending", "active", "passed", "queued")
CONFIG_ALIASES = {"H": "inner_steps"}  # DiLoCo's name for the inner steps per round

EPILOG = {
    "init": (
        "examples:\n"
        "  koinon init my-swarm                                  # the example charter (printed rules apply)\n"
        "  koinon init my-swarm --charter charter.toml --home ~/.koinon-my-swarm\n"
        "the example charter, with every rule explained: src/koinon/governance/example_charter.toml"
    ),
    "propose": (
        "examples:\n"
        '  koinon propose set-config --set inner_steps=100 --set outer_lr=0.5 --text "Longer rounds"\n'
        "  koinon propose admit 12D3KooWLq…                      # under admission = vote\n"
        "  koinon propose expel 5YcMZFtq --text 'Sends NaNs'     # a member id, or its last characters\n"
        "  koinon propose add-data --path ~/corpus --name wiki   # the folder's content hash goes on the ledger\n"
        "  koinon propose remove-data --hash 3f2a…(64 hex)\n"
        "  koinon propose release --checkpoint 1b58…(64 hex) --tag v1 --license Apache-2.0\n"
        "  koinon propose amend-charter --set window=10 --set threshold=2/3\n"
        '  koinon propose resolution --text "We train on public-domain text only"'
    ),
    "set-config": (
        "examples:\n"
        "  koinon propose set-config --set inner_steps=100                  # H=100 works too\n"
        '  koinon propose set-config --set outer_lr=0.5 --text "Calmer outer steps"'
    ),
    "admit": "example:\n  koinon propose admit 12D3KooWLqZ… --text 'Runs two GPUs for us'",
    "expel": "example:\n  koinon propose expel 5YcMZFtq --text 'Sent NaN pseudo-gradients in rounds 40-45'",
    "add-data": (
        "examples:\n"
        "  koinon propose add-data --path ~/corpus --name my-corpus\n"
        "  koinon propose add-data --hash 3f2a…(64 hex) --name wiki-2024"
    ),
    "remove-data": "examples:\n  koinon propose remove-data --path ~/corpus\n  koinon propose remove-data --hash 3f2a…",
    "release": "example:\n  koinon propose release --checkpoint 1b58d9ed…(64 hex) --tag v1.0 --license Apache-2.0",
    "amend-charter": (
        "examples:\n"
        "  koinon propose amend-charter --set window=10\n"
        "  koinon propose amend-charter --set threshold=2/3 --set admission=vote"
    ),
    "resolution": 'example:\n  koinon propose resolution --text "We train on public-domain text only"',
    "vote": (
        "examples:\n"
        "  koinon vote 3f2a9c1e yes        # a proposal id, or a unique prefix of 8+ hex digits\n"
        "  koinon vote 3f2a9c1e abstain    # voting again replaces your vote while the window is open"
    ),
    "delegate": (
        "examples:\n"
        "  koinon delegate 5YcMZFtq        # a member id, or its last characters\n"
        "  koinon delegate --revoke\n"
        "a delegation counts on proposals whose window opens after it is final; voting yourself overrides it"
    ),
    "proposals": "examples:\n  koinon proposals\n  koinon proposals --all --json",
    "proposal": "examples:\n  koinon proposal 3f2a9c1e\n  koinon proposal 3f2a9c1e --json",
    "charter": "examples:\n  koinon charter\n  koinon charter --json",
    "credit": (
        "examples:\n"
        "  koinon credit\n"
        "  koinon credit --checks 20         # also the last 20 resolved spot-checks\n"
        "  koinon credit --json\n"
        "credit counts only spot-checked, verified work (docs/verification.md)"
    ),
}


def _add(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_command(sub, name, help_text, EPILOG.get(name))


def register(sub) -> None:
    """Add the governance commands to ``koinon``'s subparsers (``argparse._SubParsersAction``)."""
    sp = _add(sub, "init", "Found a new swarm: a ledger whose genesis event is a charter (rules, founders, training).")
    sp.add_argument("name", nargs="?", default=None, metavar="NAME", help="the swarm's name (default: the charter's)")
    sp.add_argument("--charter", type=Path, default=None, metavar="FILE", help="charter TOML (default: the example)")
    home_option(sp)

    sp = _add(sub, "propose", "Propose a decision to the swarm's members (signed and appended to your feed).")
    sp.set_defaults(propose_parser=sp)
    home_option(sp)
    kinds = sp.add_subparsers(dest="kind", metavar="KIND")

    def kind(name: str, help_text: str) -> argparse.ArgumentParser:
        kp = _add(kinds, name, help_text)
        kp.add_argument("--text", default=None, help="the explanation; its first line is the title")
        # SUPPRESS: `koinon propose --home DIR KIND` must keep DIR (a subparser's default would overwrite it)
        kp.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="member folder (default: $KOINON_HOME)")
        return kp

    kp = kind("set-config", "Change the training configuration in force (all but model_size, seq_len, seed).")
    kp.add_argument("--set", action="append", required=True, metavar="KEY=VALUE", help="repeatable")
    kp = kind("admit", "Admit a member (swarms with admission = vote).")
    kp.add_argument("member", metavar="MEMBER", help="the member id (12D3KooW…; `koinon id` prints it)")
    kp = kind("expel", "Expel a member: its votes and training contributions stop counting.")
    kp.add_argument("member", metavar="MEMBER", help="a member id, or a unique tail of one (8+ characters)")
    for name, help_text in (
        ("add-data", "Add a data source (by content hash) that peers may train on."),
        ("remove-data", "Remove a data source: peers stop training on it."),
    ):
        kp = kind(name, help_text)
        src = kp.add_mutually_exclusive_group(required=True)
        src.add_argument("--path", type=Path, default=None, metavar="DIR", help="a file or folder to hash here")
        src.add_argument("--hash", default=None, metavar="HEX", help="the source's content hash (64 hex digits)")
        if name == "add-data":
            kp.add_argument("--name", default=None, help="the source's name (default: the --path's name)")
    kp = kind("release", "Publish a checkpoint as a release under a tag and a license.")
    kp.add_argument("--checkpoint", required=True, metavar="HASH", help="the checkpoint's hash (64 hex digits)")
    kp.add_argument("--tag", required=True, help="the release tag, e.g. v1.0 (each tag once)")
    kp.add_argument("--license", required=True, help="the license, e.g. Apache-2.0")
    kp = kind("amend-charter", "Change governance rules (needs the amend-charter threshold).")
    kp.add_argument("--set", action="append", required=True, metavar="RULE=VALUE", help="e.g. window=10, quorum=1/2")
    kind("resolution", "A statement the swarm votes on; nothing changes but the record (--text required).")

    sp = _add(sub, "vote", "Vote on a proposal whose window is open.")
    sp.add_argument("proposal", metavar="ID", help="the proposal id, or a unique prefix of 8+ hex digits")
    sp.add_argument(
        "choice", choices=("yes", "no", "abstain"), help="yes, no or abstain (abstentions count for quorum)"
    )
    home_option(sp)

    sp = _add(sub, "delegate", "Let another member's votes count for you when you do not vote yourself.")
    sp.add_argument("member", nargs="?", default=None, metavar="MEMBER", help="a member id, or a unique tail of one")
    sp.add_argument("--revoke", action="store_true", help="withdraw your delegation")
    home_option(sp)

    sp = _add(sub, "proposals", "List proposals: open ones (pending, active, passed, queued), or all.")
    sp.add_argument("--all", action="store_true", help="also closed ones (rejected, expired, executed, …)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    home_option(sp)

    sp = _add(sub, "proposal", "Show one proposal: its text, effect, window, tally, voters and history.")
    sp.add_argument("proposal", metavar="ID", help="the proposal id, or a unique prefix of 8+ hex digits")
    sp.add_argument("--json", action="store_true", help="print JSON")
    home_option(sp)

    sp = _add(sub, "charter", "Show the swarm's charter and what is in force now: rules, configuration, data, members.")
    sp.add_argument("--json", action="store_true", help="print JSON")
    home_option(sp)

    sp = _add(sub, "credit", "Show each member's verified credit (samples) and share, spot-checks and penalties.")
    sp.add_argument(
        "--checks", type=int, default=0, metavar="N", help="also list the last N resolved spot-checks (default 0)"
    )
    sp.add_argument("--json", action="store_true", help="print JSON")
    home_option(sp)


def main_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    """{command name: handler(args) → exit status} for ``koinon``'s dispatch table."""
    return {
        "init": cmd_init,
        "propose": cmd_propose,
        "vote": cmd_vote,
        "delegate": cmd_delegate,
        "proposals": cmd_proposals,
        "proposal": cmd_proposal,
        "charter": cmd_charter,
        "credit": cmd_credit,
    }


def run(argv: list[str] | None = None) -> int:
    """A ``koinon`` with only these commands, with the same error handling as ``koinon.cli.main.main``."""
    return run_standalone(register, main_commands, argv)


# --- the local ledger's final governance state ----------------------------------------------------------------------
@dataclass
class View:
    """The ledger of a member folder, read once: its chain of cuts and the governance state after the last final
    cut, plus the governance events not in a final cut yet."""

    home: Path
    store: LedgerStore
    chain: Chain
    state: GovState  # after the last final cut
    me: str | None  # this folder's member id (None without an identity)
    next_cut: int  # the index of the next cut: an event appended now lands in this cut or a later one
    unfinal: list[Event]  # governance events (proposal, vote, delegate, cancel) not in a final cut yet

    @property
    def final(self) -> int:
        """Index of the last final cut (-1: none yet)."""
        return self.state.index

    def when(self, cut: int) -> str:
        """``#N`` with an estimate relative to the last final cut."""
        if cut <= self.final:
            return f"#{cut}"
        return f"#{cut} (≈ {_seconds(self.state.rules.estimate_s(cut - self.final))})"

    def note(self) -> str | None:
        if not self.unfinal:
            return None
        mine = sum(e.author == self.me for e in self.unfinal)
        whose = f" ({mine} of yours)" if self.me and mine else ""
        last = f"final cut #{self.final}" if self.final >= 0 else "the charter (no final cut yet)"
        return (
            f"note: {len(self.unfinal)} governance event(s){whose} are not in a final cut yet; this is the state "
            f"after {last}"
        )


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


@contextmanager
def open_view(home: Path) -> Iterator[View]:
    from koinon.identity import Identity
    from koinon.ledger.cuts import GENESIS
    from koinon.ledger.export import load_chain
    from koinon.ledger.store import LedgerStore

    home = Path(home)
    path = home / LEDGER_FILE
    if not path.is_file():
        raise LedgerError(
            f"no ledger at {path}: found a swarm with `koinon init NAME --home {home}`, or join one with "
            "`koinon start --initial-peers …`"
        )
    store = LedgerStore(path)
    try:
        if store.swarm_id is None:
            raise LedgerError(f"the ledger at {path} has no charter yet: found a swarm with `koinon init` or join one")
        chain, _ = load_chain(store)
        state = chain.final_governance()
        if state is None:
            raise LedgerError(f"the final cuts in {path} cover events missing there; run `koinon audit`")
        final = chain.final_cuts()
        covered = chain.covered(final[-1].id if final else GENESIS)
        unfinal = []
        for author, (seq, _) in sorted(store.heads().items()):
            start = covered.get(author, 0)
            if seq > start:
                unfinal += [e for e in store.events_after(author, start, seq - start) if e.kind in GOV_KINDS]
        tips = chain.longest_notarized_tips()
        next_cut = 0 if tips == [GENESIS] else chain.cuts[tips[0]].height
        me = Identity.load(home).member_id if (home / "identity.key").exists() else None
        yield View(home, store, chain, state, me, next_cut, unfinal)
    finally:
        store.close()


def _identity(home: Path):
    from koinon.identity import Identity

    return Identity.load(home)  # IdentityError: "no identity at …; create one with `koinon id`"


def _submit(home: Path, identity, epoch_ms: int, kind: str, body: dict) -> tuple[bytes, bool]:
    """Append to this member's feed: directly (holding the home's lock) or through the running peer's outbox."""
    from koinon.ledger.kinds import check_body
    from koinon.ledger.node import LedgerNode
    from koinon.ledger.outbox import submit
    from koinon.ledger.store import LedgerStore

    check_body(kind, body)  # a malformed body is a clear error here, before any signing

    def append_direct(kind: str, body: dict) -> bytes:
        # a fresh store, opened under the lock: a cached head from before the lock could sign a second event
        # with the same seq (an equivocation, which bans the member)
        store = LedgerStore(Path(home) / LEDGER_FILE)
        try:
            node = LedgerNode(store, identity, lambda: int(time.time() * 1000), epoch_ms)
            return node.append_own(kind, body).id
        finally:
            store.close()

    return submit(Path(home), kind, body, append_direct)


def _via(via_peer: bool, home: Path) -> str:
    return f" (through the peer running on {home})" if via_peer else ""


def _require_member(v: View, me: str, doing: str) -> None:
    s = v.state
    if me in s.banned:
        raise GovernanceError(f"you ({me}) are banned for equivocation and cannot {doing}")
    if me in s.expelled:
        raise GovernanceError(f"you ({me}) were expelled from this swarm and cannot {doing}")
    if me in s.members:
        return
    joined = next(v.store.iter_events(kind="join", author=me), None) is not None
    if s.rules.admission == "vote":
        how = f"this swarm admits members by vote: ask a member to run `koinon propose admit {me}`"
    elif joined:
        how = "your join is not in a final cut yet; try again once the swarm has finalised it"
    else:
        how = "join it first with `koinon start --initial-peers …` (admission is open)"
    raise GovernanceError(f"you ({me}) are not a member of this swarm, so you cannot {doing}; {how}")


def _member_arg(text: str, candidates: set[str], what: str) -> str:
    """A full member id, or the unique member among ``candidates`` whose id ends with ``text`` (8+ characters)."""
    from koinon.ledger.kinds import member

    text = text.strip().lstrip("…")
    if member(text):
        return text
    if text.startswith("12D3KooW"):
        raise ConfigError(f"{what} {text!r} is not a valid member id (`koinon id` prints one)")
    if len(text) < 8:
        raise ConfigError(f"{what} {text!r} is neither a member id (12D3KooW…) nor 8+ of its last characters")
    matches = sorted(m for m in candidates if m.endswith(text))
    if len(matches) != 1:
        found = "no member's id ends" if not matches else f"{len(matches)} members' ids end"
        raise ConfigError(f"{found} with {text!r}; give the full member id (12D3KooW…)")
    return matches[0]


def _hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ConfigError(f"{what} must be 64 hex digits, got {text!r}")
    return value


# --- formatting -----------------------------------------------------------------------------------------------------
def _plain(v: object) -> object:
    """JSON-friendly: bytes as hex, tuples as lists."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _value(v: object) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(type(x) is int for x in v):
        return f"{v[0]}/{v[1]}"
    if isinstance(v, bytes):
        return v.hex()[:16] + "…"  # the full hash is in `koinon proposal ID` (effect) and in --json
    return str(v)


def effect_text(action: str, effect: dict) -> str:
    """One line about what a proposal would change."""
    if action in ("set-config", "amend-charter"):
        changes = effect.get("changes" if action == "set-config" else "rules")
        if isinstance(changes, dict):
            return ", ".join(f"{k}={_value(v)}" for k, v in sorted(changes.items()))
    if action in ("admit", "expel"):
        return str(effect.get("member"))
    if action == "add-data":
        return f"{effect.get('name')} ({_value(effect.get('source'))})"
    if action == "remove-data":
        return _value(effect.get("source"))
    if action == "release":
        return f"{effect.get('tag')} = checkpoint {_value(effect.get('checkpoint'))} ({effect.get('license')})"
    if action == "resolution":
        return "(the text only)"
    return json.dumps(_plain(effect), sort_keys=True)


def _title(text: str, action: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else action


def _print_json(obj: object) -> None:
    print(json.dumps(_plain(obj), indent=2, sort_keys=False))


# --- init -----------------------------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from koinon.governance.charter import charter_from_toml, default_charter_text, describe_rules, load_charter
    from koinon.governance.rules import rules_or_defaults
    from koinon.identity import Identity
    from koinon.ledger.node import LedgerNode
    from koinon.ledger.outbox import exclusive
    from koinon.ledger.store import LedgerStore

    home = Path(args.home)
    path = home / LEDGER_FILE
    if path.is_file():
        store = LedgerStore(path)
        try:
            charter = store.charter()
        finally:
            store.close()
        if charter is not None:
            raise GovernanceError(
                f"{home} already holds swarm {charter.body['name']!r} ({charter.id.hex()}); "
                "use another --home to found a new one"
            )
    identity, created = Identity.load_or_create(home)
    me = identity.member_id
    if args.charter is not None:
        body = load_charter(args.charter, me, name=args.name)
    else:
        body = charter_from_toml(default_charter_text(), me, name=args.name)
    rules, _ = rules_or_defaults(body["rules"])
    with exclusive(home) as mine:
        if not mine:
            raise LedgerError(f"a Koinon peer is running on {home}; stop it first, or use another --home")
        store = LedgerStore(path)
        try:
            node = LedgerNode(store, identity, lambda: int(time.time() * 1000), rules.epoch_ms)
            event = node.found(body["name"], body["training"], body["rules"], body["founders"])
        finally:
            store.close()

    swarm = event.id.hex()
    if created:
        print(f"created member {me} (key {identity.path})")
    print(f"founded swarm {body['name']!r}")
    print(f"swarm id  {swarm}")
    founders = event.body["founders"]
    print(f"founders  {len(founders)}:")
    for f in founders:
        print(f"  {f}{' (you)' if f == me else ''}")
    print("rules")
    for line in describe_rules(rules):
        print(f"  {line}")
    config = json.loads(body["training"]["config"])
    print(f"training  configuration {body['training']['hash'].hex()[:16]}…")
    print("  " + ", ".join(f"{k}={v}" for k, v in config.items()))
    data = body["training"].get("data")
    if data is None:
        print("data      not restricted: each peer trains on what it is given (`koinon start --data DIR`)")
    else:
        print(f"data      {len(data)} source(s) only:")
        for name, h in data:
            print(f"  {name} {h.hex()}")
    if rules.weight in ("contribution", "quadratic"):
        print(
            f"warning: weight = {rules.weight}: votes weigh by verified credit, which members earn only once "
            "their training work passes spot-checks (`koinon credit`): until then nobody can vote"
        )
    name = body["name"]
    print("next:")
    print(f"  koinon start --home {home} --swarm {name}      # start training it")
    print(f"  others join with: koinon start --initial-peers ADDR --swarm {name} --swarm-id {swarm}")
    print("  (ADDR: an address `koinon start` prints)")
    return 0


# --- propose --------------------------------------------------------------------------------------------------------
def _key_values(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(f"--set takes {what}=VALUE, got {item!r}")
        if key in out:
            raise ConfigError(f"--set {key} is given twice")
        out[key] = value
    return out


def config_changes(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` → set-config changes: ints as ints, floats as their decimal text (the ledger has no
    floats), text as text. Unknown and frozen keys are errors (effects.config_value)."""
    from koinon.governance.effects import CONFIG_TYPES, config_value

    changes: dict[str, object] = {}
    for key, value in _key_values(items, "KEY").items():
        key = CONFIG_ALIASES.get(key, key)
        kind = CONFIG_TYPES.get(key)
        if kind == "int":
            try:
                typed: object = int(value)
            except ValueError:
                raise GovernanceError(f"{key} must be an integer, got {value!r}") from None
        else:
            typed = value
        config_value(key, typed)  # unknown, frozen or malformed: GovernanceError with the fix
        if key in changes:
            raise ConfigError(f"--set {key} is given twice")
        changes[key] = typed
    return changes


def rule_changes(items: list[str]) -> dict[str, object]:
    """``--set RULE=VALUE`` → amend-charter rules: integers, fractions as [num, den], words as text."""
    from koinon.governance.rules import FRACTIONS, RULE_NAMES

    rules: dict[str, object] = {}
    for key, value in _key_values(items, "RULE").items():
        if key not in RULE_NAMES:
            raise GovernanceError(f"unknown charter rule {key!r}; known: {', '.join(RULE_NAMES)}")
        if key in FRACTIONS:
            num, _, den = value.partition("/")
            try:
                rules[key] = [int(num), int(den)]
            except ValueError:
                raise GovernanceError(f"rule {key} must be a fraction like 2/3, got {value!r}") from None
        elif key in ("admission", "weight"):
            rules[key] = value
        else:
            try:
                rules[key] = int(value)
            except ValueError:
                raise GovernanceError(f"rule {key} must be an integer, got {value!r}") from None
    return rules


def _source(args: argparse.Namespace) -> bytes:
    if args.hash is not None:
        return _hex32(args.hash, "--hash")
    from koinon.training.data import source_hash

    return bytes.fromhex(source_hash(args.path.expanduser()))


def _effect(args: argparse.Namespace, v: View) -> tuple[str, dict]:
    kind = args.kind
    if kind == "set-config":
        return kind, {"changes": config_changes(args.set)}
    if kind == "admit":
        return kind, {"member": _member_arg(args.member, set(), "MEMBER")}
    if kind == "expel":
        return kind, {"member": _member_arg(args.member, v.state.members, "MEMBER")}
    if kind == "add-data":
        source = _source(args)
        name = args.name or (args.path.expanduser().resolve().name if args.path is not None else None)
        if not name:
            raise ConfigError("add-data --hash needs --name NAME (the source's name)")
        return kind, {"source": source, "name": name}
    if kind == "remove-data":
        return kind, {"source": _source(args)}
    if kind == "release":
        return kind, {"checkpoint": _hex32(args.checkpoint, "--checkpoint"), "tag": args.tag, "license": args.license}
    if kind == "amend-charter":
        return kind, {"rules": rule_changes(args.set)}
    return kind, {}


def cmd_propose(args: argparse.Namespace) -> int:
    from koinon.governance.effects import check_effect

    if args.kind is None:
        args.propose_parser.print_help()
        return 2
    identity = _identity(args.home)
    me = identity.member_id
    with open_view(args.home) as v:
        _require_member(v, me, "propose")
        action, effect = _effect(args, v)
        text = args.text if args.text is not None else f"{action}: {effect_text(action, effect)}"
        if action == "resolution" and (args.text is None or not text.strip()):
            raise ConfigError("a resolution needs its text: --text 'What the swarm resolves'")
        check_effect(action, effect, v.state)  # what every peer checks when the proposal enters the state
        rules, next_cut = v.state.rules, v.next_cut
        body = {"action": action, "effect": effect, "text": text}
        event_id, via_peer = _submit(args.home, identity, rules.epoch_ms, "proposal", body)
        opens = next_cut + rules.delay
        closes = opens + rules.window - 1
        print(f"proposal {event_id.hex()}{_via(via_peer, args.home)}")
        print(f"  {action}: {effect_text(action, effect)}")
        print(f"  title: {_title(text, action)}")
        print(
            f"it enters the tally once a final cut includes it (the next cut is #{next_cut}): at the earliest, "
            f"voting opens at cut {v.when(opens)} and closes at cut {v.when(closes)}; if it passes it takes effect "
            f"at cut {v.when(closes + rules.timelock)}"
        )
        print(f"see it with: koinon proposal {event_id.hex()[:12]}")
    return 0


# --- finding a proposal ---------------------------------------------------------------------------------------------
def _find(v: View, prefix: str):
    """(proposal, None) for a proposal in the final state; (None, event) for a proposal event that is not final
    yet or that the state ignored. Errors for a bad, ambiguous or unknown prefix."""
    text = prefix.strip().lower().rstrip("…")
    if len(text) < 8:
        raise ConfigError(f"ID {prefix!r} is too short: give at least 8 hex digits (`koinon proposals` lists them)")
    try:
        bytes.fromhex(text if len(text) % 2 == 0 else text + "0")
    except ValueError:
        raise ConfigError(f"ID {prefix!r} is not hexadecimal; copy it from `koinon proposals`") from None
    events = [e for e in v.store.iter_events(kind="proposal") if e.id.hex().startswith(text)]
    if not events:
        raise GovernanceError(f"no proposal with id {text}… in this ledger (`koinon proposals --all` lists them)")
    if len(events) > 1:
        raise GovernanceError(f"{len(events)} proposals have ids starting with {text}; give more hex digits")
    event = events[0]
    p = v.state.proposals.get(event.id)
    return (p, None) if p is not None else (None, event)


def _not_final(v: View, event) -> bool:
    return any(e.id == event.id for e in v.unfinal)


def _ignored_reason(v: View, event_id: bytes) -> str:
    return v.state.ignored_proposals.get(
        event_id, "its proposer was not a member, or its effect could not apply when a cut included it"
    )


# --- vote -----------------------------------------------------------------------------------------------------------
def cmd_vote(args: argparse.Namespace) -> int:
    identity = _identity(args.home)
    me = identity.member_id
    with open_view(args.home) as v:
        p, event = _find(v, args.proposal)
        if p is None:
            short = event.id.hex()[:12]
            if _not_final(v, event):
                raise GovernanceError(
                    f"proposal {short} is not in a final cut yet, so its window is not open (a vote now would be "
                    f"ignored); its voting opens at cut #{v.next_cut + v.state.rules.delay} at the earliest "
                    f"(the last final cut is #{v.final}); try again then"
                )
            raise GovernanceError(f"proposal {short} was ignored by every peer: {_ignored_reason(v, event.id)}")
        short = p.id.hex()[:12]
        if p.state in ("cancelled",):
            raise GovernanceError(f"proposal {short} was cancelled by its proposer; there is nothing to vote on")
        if p.state not in ("pending", "active"):
            raise GovernanceError(f"proposal {short} is closed ({p.state}: {p.reason}); voting ended at cut #{p.close}")
        if v.next_cut > p.close:
            raise GovernanceError(
                f"voting on proposal {short} closes at cut #{p.close} and the next cut is #{v.next_cut}: "
                "a vote now would be ignored"
            )
        if p.state == "pending" and v.next_cut < p.open:
            raise GovernanceError(
                f"voting on proposal {short} opens at cut #{p.open} (the next cut is #{v.next_cut}); try again then "
                f"(≈ {_seconds(v.state.rules.estimate_s(p.open - v.next_cut))})"
            )
        if me in v.state.banned or me in v.state.expelled:
            raise GovernanceError(f"you ({me}) were expelled or banned: your vote would not count")
        if p.state == "active" and me not in p.weights:
            raise GovernanceError(
                f"you ({me}) were not a member when voting on proposal {short} opened at cut #{p.open}: "
                "your vote would not count"
            )
        if p.state == "pending":
            _require_member(v, me, "vote")
        event_id, via_peer = _submit(
            args.home, identity, v.state.rules.epoch_ms, "vote", {"proposal": p.id, "choice": args.choice}
        )
        print(f"voted {args.choice} on proposal {short} ({p.title}){_via(via_peer, args.home)}")
        print(f"vote event {event_id.hex()}")
        print(
            f"it counts if a cut up to #{p.close} includes it (the next cut is #{v.next_cut}); "
            "voting again before then replaces it"
        )
    return 0


# --- delegate -------------------------------------------------------------------------------------------------------
def cmd_delegate(args: argparse.Namespace) -> int:
    if (args.member is None) == (not args.revoke):
        raise ConfigError("give either a MEMBER to delegate to or --revoke (see `koinon delegate --help`)")
    identity = _identity(args.home)
    me = identity.member_id
    with open_view(args.home) as v:
        _require_member(v, me, "delegate")
        if args.revoke:
            pending = any(e.kind == "delegate" and e.author == me for e in v.unfinal)
            if me not in v.state.delegations and not pending:
                raise GovernanceError("you have no delegation to revoke")
            to = None
        else:
            to = _member_arg(args.member, v.state.members, "MEMBER")
            if to == me:
                raise ConfigError("you cannot delegate to yourself; to withdraw a delegation use --revoke")
            if to not in v.state.members:
                raise GovernanceError(f"{to} is not a member: only members' votes can count for you")
        event_id, via_peer = _submit(args.home, identity, v.state.rules.epoch_ms, "delegate", {"to": to})
        if to is None:
            print(f"revoked your delegation{_via(via_peer, args.home)} (event {event_id.hex()[:16]})")
        else:
            print(f"delegated your votes to {to}{_via(via_peer, args.home)} (event {event_id.hex()[:16]})")
            chain, seen = to, {me}
            while chain in v.state.delegations and chain not in seen:
                seen.add(chain)
                chain = v.state.delegations[chain]
            if chain == me:
                print("warning: their delegation leads back to you: the cycle counts only if one of you votes")
        print(
            "it applies to proposals whose window opens after a final cut includes it; "
            "voting yourself always overrides it"
        )
    return 0


# --- reading --------------------------------------------------------------------------------------------------------
def _tally(v: View, p):
    if p.state == "active":
        return p.current_tally(v.state.expelled | v.state.banned)
    return p.result


def proposal_dict(v: View, p) -> dict:
    t = _tally(v, p)
    tally_obj = None
    if t is not None:
        tally_obj = t.to_dict() | {"cast": t.cast, "so_far": p.state == "active"}
    return {
        "id": p.id.hex(),
        "action": p.action,
        "title": p.title,
        "text": p.text,
        "effect": p.effect,
        "proposer": p.proposer,
        "state": p.state,
        "reason": p.reason,
        "final": True,
        "cuts": {"included": p.included, "open": p.open, "close": p.close, "execute_at": p.execute_at},
        "quorum": list(p.quorum),
        "threshold": list(p.threshold),
        "tally": tally_obj,
        "votes": [{"member": m, "choice": c, "event": e} for m, (c, e) in p.votes.items()],
        "delegated": (
            [{"member": m, "via": d, "choice": t.direct[d]} for m, d in sorted(t.delegated.items())] if t else []
        ),
        "ignored": [{"event": e, "reason": r} for e, r in p.ignored],
        "history": [{"cut": i, "state": s} for i, s in p.history],
        "applied": p.applied,
    }


def _event_dict(v: View, e) -> dict:
    not_final = _not_final(v, e)
    b = e.body
    return {
        "id": e.id.hex(),
        "action": b["action"],
        "title": _title(b["text"], b["action"]),
        "text": b["text"],
        "effect": b["effect"],
        "proposer": e.author,
        "state": "not final" if not_final else "ignored",
        "reason": "not in a final cut yet" if not_final else _ignored_reason(v, e.id),
        "final": not not_final,
    }


def cmd_proposals(args: argparse.Namespace) -> int:
    with open_view(args.home) as v:
        rows = [proposal_dict(v, p) for p in v.state.proposals.values() if args.all or p.state in OPEN_STATES]
        rows += [_event_dict(v, e) for e in v.unfinal if e.kind == "proposal"]
        if args.json:
            _print_json({"final_cut": v.final, "next_cut": v.next_cut, "proposals": rows})
            return 0
        if not rows:
            which = "proposals" if args.all else "open proposals (`--all` shows closed ones too)"
            print(f"no {which}")
        else:
            print(f"{'ID':<12} {'KIND':<13} {'STATE':<10} {'YES':>4} {'NO':>4} {'ABST':>4}  {'WINDOW':<11} TITLE")
        for r in rows:
            t = r.get("tally")
            yes, no, ab = (t["yes"], t["no"], t["abstain"]) if t else ("-", "-", "-")
            cuts = r.get("cuts")
            window = f"#{cuts['open']}–#{cuts['close']}" if cuts else "-"
            print(
                f"{r['id'][:12]} {r['action']:<13} {r['state']:<10} {yes:>4} {no:>4} {ab:>4}  {window:<11} "
                f"{r['title'][:60]}"
            )
        print(f"last final cut #{v.final}; the next cut is #{v.next_cut}")
        if v.note():
            print(v.note())
    return 0


def cmd_proposal(args: argparse.Namespace) -> int:
    with open_view(args.home) as v:
        p, event = _find(v, args.proposal)
        if p is None:
            d = _event_dict(v, event)
            if args.json:
                _print_json(d)
                return 0
            print(f"proposal {d['id']}  ({d['state']}: {d['reason']})")
            print(f"  {d['action']}: {effect_text(d['action'], d['effect'])}")
            print(f"  by {d['proposer']}")
            print("text:\n  " + "\n  ".join(d["text"].splitlines() or [""]))
            if d["state"] == "not final":
                print(f"voting opens at cut #{v.next_cut + v.state.rules.delay} at the earliest")
            return 0
        d = proposal_dict(v, p)
        if args.json:
            _print_json(d)
            return 0
        print(f"proposal {d['id']}")
        print(f"state     {p.state}: {p.reason}")
        print(f"action    {p.action}: {effect_text(p.action, p.effect)}")
        print(f"effect    {json.dumps(_plain(p.effect), sort_keys=True)}")
        print(f"proposer  {p.proposer}")
        print("text:\n  " + "\n  ".join(p.text.splitlines() or [""]))
        print(
            f"cuts      included #{p.included}; voting {v.when(p.open)} to {v.when(p.close)}; "
            f"takes effect at {v.when(p.execute_at)} if it passes"
        )
        print(f"rules     quorum {_value(p.quorum)} of the weight at opening; threshold {_value(p.threshold)}")
        t = d["tally"]
        if t is not None:
            label = "tally so far" if t["so_far"] else "tally"
            print(
                f"{label:<9} yes {t['yes']}, no {t['no']}, abstain {t['abstain']} "
                f"({t['cast']} of {t['total']} weight cast)"
            )
        if d["votes"]:
            print("votes")
            for x in d["votes"]:
                print(f"  {x['member']}  {x['choice']}")
        for x in d["delegated"]:
            print(f"  {x['member']}  {x['choice']} (through {x['via'][-8:]})")
        if d["ignored"]:
            print("ignored votes")
            for x in d["ignored"]:
                print(f"  {x['event'].hex()[:12]} {x['reason']}")
        if p.applied:
            print(f"applied   {p.applied}")
        print("history   " + ", ".join(f"cut #{i}: {s}" for i, s in p.history))
        if v.note():
            print(v.note())
    return 0


def charter_dict(v: View) -> dict:
    from koinon.governance.state import GovState

    s = v.state
    founded = GovState(s.charter)
    body = s.charter.body
    return {
        "name": body["name"],
        "swarm": s.swarm.hex(),
        "founded": datetime.fromtimestamp(s.charter.time / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "founders": body["founders"],
        "rules": s.rules.to_body(),
        "rules_as_founded": founded.rules.to_body(),
        "config": json.loads(s.config.canonical_json()) if s.config else None,
        "config_hash": s.config_hash(),
        "config_history": [{"cut": i, "hash": h, "proposal": pid} for i, h, pid in s.config_history],
        "data": {"restricted": s.restricted_data, "sources": s.data, "removed": sorted(s.removed_data)},
        "members": sorted(s.members),
        "expelled": sorted(s.expelled),
        "banned": sorted(s.banned),
        "delegations": dict(sorted(s.delegations.items())),
        "releases": s.releases,
        "resolutions": s.resolutions,
        "decisions": s.decisions,
        "problems": s.problems,
        "final_cut": s.index,
        "next_cut": v.next_cut,
        "not_final": len(v.unfinal),
    }


def cmd_charter(args: argparse.Namespace) -> int:
    from koinon.governance.charter import describe_rules
    from koinon.governance.rules import parse_rules

    with open_view(args.home) as v:
        d = charter_dict(v)
        if args.json:
            _print_json(d)
            return 0
        s = v.state
        print(f"swarm     {d['name']!r}  id {d['swarm']}")
        print(f"founded   {d['founded']} by {s.charter.author}")
        print(f"founders  {len(d['founders'])}: " + ", ".join(f"…{f[-8:]}" for f in d["founders"]))
        members = d["members"]
        shown = ", ".join(f"…{m[-8:]}" for m in members[:10]) + (", …" if len(members) > 10 else "")
        print(f"members   {len(members)}: {shown}")
        if d["expelled"] or d["banned"]:
            print(f"excluded  {len(d['expelled'])} expelled, {len(d['banned'])} banned for equivocation")
        amended = d["rules"] != d["rules_as_founded"]
        print("rules in force" + (" (amended)" if amended else " (as founded)"))
        for line in describe_rules(s.rules):
            print(f"  {line}")
        if amended:
            print("rules as founded")
            for line in describe_rules(parse_rules(d["rules_as_founded"])):
                print(f"  {line}")
        if s.config is not None:
            origin = s.config_history[-1] if s.config_history else (-1, "", None)
            how = "as founded" if origin[2] is None else f"set by proposal {origin[2].hex()[:12]} at cut #{origin[0]}"
            print(f"training  configuration {d['config_hash']} ({how})")
            print("  " + ", ".join(f"{k}={val}" for k, val in d["config"].items()))
        else:
            print("training  no configuration in the charter")
        if s.restricted_data:
            print(f"data      only these {len(s.data)} source(s):")
            for h, name in s.data.items():
                print(f"  {name} {h}")
        else:
            print("data      not restricted: peers train on what they are given")
        for h in sorted(s.removed_data):
            print(f"  removed {h}")
        print(f"releases  {len(s.releases)}")
        for tag, r in s.releases.items():
            print(f"  {tag}: checkpoint {r['checkpoint']} ({r['license']})")
        print(f"resolutions {len(s.resolutions)}")
        for r in s.resolutions:
            print(f"  cut #{r['cut']} {r['id'][:12]}: {_title(r['text'], 'resolution')}")
        print(f"decisions {len(s.decisions)}")
        for x in s.decisions:
            print(f"  cut #{x['cut']} {x['id'][:12]} {x['action']}: {x['applied']}")
        for problem in s.problems:
            print(f"warning: charter: {problem}")
        print(f"state after final cut #{v.final}; the next cut is #{v.next_cut}")
        if v.note():
            print(v.note())
    return 0


def _who(member: str | None, me: str | None) -> str:
    if member is None:
        return "-"
    return f"…{member[-8:]}" + (" (you)" if member == me else "")


def _verdict_text(c: dict, member: str) -> str:
    said = next((x for x in c["verdicts"] if x["member"] == member), None)
    answer = "-" if said is None else "ok" if said["ok"] else f"fail ({said['error_ppm']} ppm)"
    return f"…{member[-8:]} {answer}"


WEIGHT_TEXT = {
    "member": "one member, one vote (credit does not weigh)",
    "contribution": "a member's vote weighs its verified credit",
    "quadratic": "a member's vote weighs the integer square root of its verified credit",
}


def cmd_credit(args: argparse.Namespace) -> int:
    if args.checks < 0:
        raise ConfigError(f"--checks takes a number of checks (0 or more), got {args.checks}")
    with open_view(args.home) as v:
        d = credit_dict(v.state, args.checks)
        if args.json:
            _print_json(d)
            return 0
        rule = d["weight_rule"]
        print(f"weight rule: {rule}: {WEIGHT_TEXT.get(rule, 'see `koinon charter`')}")
        print("credit counts only spot-checked, verified work (docs/verification.md)")
        if not d["members"]:
            print("no member has committed work yet")
        else:
            print(
                f"{'MEMBER':<17} {'CREDIT':>10} {'SHARE':>7} {'COMMITS':>7} {'SAMPLED':>7} {'VERIFIED':>8} "
                f"{'FAILED':>6} {'FALSE ACC':>9}  PENALTY"
            )
        for r in d["members"]:
            share = f"{r['share_permille'] // 10}.{r['share_permille'] % 10} %"
            until = f"excluded until round {r['excluded_until']}" if r["excluded_until"] is not None else ""
            print(
                f"{_who(r['member'], v.me):<17} {r['credit']:>10} {share:>7} {r['commits']:>7} {r['sampled']:>7} "
                f"{r['verified']:>8} {r['failed']:>6} {r['false_accusations']:>9}  {until}".rstrip()
            )
        print(f"total {d['total']} verified samples; round {d['round']}; state after final cut #{v.final}")
        if args.checks > 0:
            if not d["checks"]:
                print("no resolved spot-checks yet")
            else:
                print(f"last {len(d['checks'])} resolved spot-check(s), oldest first")
                print(f"{'ROUND':>5} {'AUTHOR':<17} {'STATUS':<16} {'VERIFIER':<28} REFEREES")
            for c in d["checks"]:
                referees = ", ".join(_verdict_text(c, m) for m in c["referees"]) or "-"
                print(
                    f"{c['round']:>5} {_who(c['author'], v.me):<17} {c['status']:<16} "
                    f"{_verdict_text(c, c['verifier']):<28} {referees}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
