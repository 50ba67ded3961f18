"""``koinon demo``: a local swarm of separate peer processes on 127.0.0.1, live progress, and an end summary.

The swarm is founded from the example charter (src/koinon/governance/example_charter.toml) and governs itself
during the run: once every peer has trained two rounds, peer-1 proposes halving H (a set-config proposal); when
the vote opens, every peer votes yes except the last one (no), and the summary shows the proposal, its tally and
the round from which every peer trained with the new H. Proposals and votes reach the running peers through
their outboxes, exactly as ``koinon propose`` and ``koinon vote`` do.

Each peer is ``python -m koinon start`` in its own process group (so a stop never leaves hivemind children or
p2pd behind) with its home under ``WORKDIR/peer-<i>``. Progress comes from each peer's ``metrics.jsonl``.
When the time is up the demo writes ``STOP_AFTER`` (the next round) into every home, so all peers finish the
same last round and end with the same θ; a peer that does not finish in time gets SIGINT, then SIGKILL.

``--attack KIND`` adds one more peer, ``peer-N`` after the N honest ones, started with ``koinon start --attack KIND``
(swarm/attacks.py). The summary (``attack`` in ``--summary-json``) names it, the reducer in force, how many parts
the honest peers rejected, and whether their eval loss still fell and their θ stayed finite and identical.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from koinon.errors import ConfigError, SwarmError

console = Console()


def read_metrics(home: Path) -> list[dict]:
    path = home / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return out


class LocalPeer:
    def __init__(self, index: int, home: Path, extra: list[str], attack: str | None = None) -> None:
        self.index, self.home, self.attack = index, home, attack
        self.extra = [*extra, "--attack", attack] if attack else extra
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"peer-{self.index}"

    def start(self, initial_peers: list[str], wait_for: int, threads: int) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "koinon",
            "start",
            "--home",
            str(self.home),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--wait-for-peers",
            str(wait_for),
            "--threads",
            str(threads),
            *self.extra,
        ]
        if initial_peers:
            cmd += ["--initial-peers", *initial_peers]
        log = open(self.home / "peer.log", "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def maddrs(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            path = self.home / "maddrs"
            if path.exists() and path.read_text().strip():
                return path.read_text().split()
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = (self.home / "peer.log").read_text()[-2000:] if (self.home / "peer.log").exists() else ""
        raise SwarmError(f"peer-{self.index} did not start; its log ends with:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop_after(self, round_no: int) -> None:
        (self.home / "STOP_AFTER").write_text(f"{round_no}\n")


def _no_direct_append(kind: str, body: dict) -> bytes:
    raise SwarmError("the demo peer is not running: it cannot take a governance event")


class ScriptedGovernance:
    """The demo's governance script: propose H → H/2 from peer-1, then everybody votes when the window opens."""

    def __init__(self, peers: list[LocalPeer], inner_steps: int) -> None:
        self.peers = peers
        self.new_h = max(1, inner_steps // 2)
        self.proposer = peers[1] if len(peers) > 1 else peers[0]
        self.choices = {p.index: ("no" if len(peers) >= 3 and p is peers[-1] else "yes") for p in peers}
        self.proposal: bytes | None = None
        self.stage = "waiting for two rounds"
        self.error: str | None = None
        self._next_check = 0.0

    def step(self) -> None:
        from koinon.ledger.outbox import submit

        if self.stage == "done" or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + 2.0
        try:
            if self.proposal is None:
                rounds = [[r for r in read_metrics(p.home) if r.get("event") == "round"] for p in self.peers]
                if all(len(r) >= 2 for r in rounds):
                    body = {
                        "action": "set-config",
                        "effect": {"changes": {"inner_steps": self.new_h}},
                        "text": f"Shorter rounds: H = {self.new_h}\n\nAverage twice as often, for fresher updates.",
                    }
                    self.proposal, _ = submit(self.proposer.home, "proposal", body, _no_direct_append, timeout=20)
                    self.stage = "proposed, waiting for the vote to open"
            elif self.stage.startswith("proposed"):
                from koinon.cli.gov_cmds import open_view

                with open_view(self.peers[0].home) as view:
                    p = view.state.proposals.get(self.proposal)
                    state = p.state if p else None
                if state == "active":
                    for peer in self.peers:
                        body = {"proposal": self.proposal, "choice": self.choices[peer.index]}
                        submit(peer.home, "vote", body, _no_direct_append, timeout=20)
                    self.stage = "done"
                elif state is not None and state != "pending":
                    self.stage, self.error = "done", f"the proposal is {state} before anyone voted"
        except Exception as e:  # the demo goes on training; the summary says what happened
            self.stage, self.error = "done", f"{type(e).__name__}: {e}"

    def summary(self) -> list[dict]:
        """The decisions of the run, read from peer-0's ledger, with the round each peer applied them from."""
        if self.proposal is None:
            return []
        from koinon.cli.gov_cmds import open_view, proposal_dict

        out = {"id": self.proposal.hex(), "proposer": f"peer-{self.proposer.index}", "error": self.error}
        try:
            with open_view(self.peers[0].home) as view:
                p = view.state.proposals.get(self.proposal)
                if p is not None:
                    d = proposal_dict(view, p)
                    out.update(
                        action=d["action"],
                        title=d["title"],
                        effect={"inner_steps": self.new_h},
                        state=d["state"],
                        reason=d["reason"],
                        tally=d["tally"],
                        history=d["history"],
                        quorum=d["quorum"],
                        threshold=d["threshold"],
                    )
                else:
                    out.update(state="not in a final cut yet")
        except Exception as e:
            out.update(state="unknown", reason=str(e))
        out["votes"] = (
            {f"peer-{i}": c for i, c in self.choices.items()} if self.stage == "done" and not self.error else {}
        )
        effective = {}
        for peer in self.peers:
            rows = [r for r in read_metrics(peer.home) if r.get("event") == "round"]
            effective[f"peer-{peer.index}"] = min(
                (r["round"] for r in rows if r.get("inner_steps") == self.new_h), default=None
            )
        out["effective_round"] = effective
        return [out]


def _table(peers: list[LocalPeer], elapsed: float, total: float) -> Table:
    t = Table(title=f"Koinon demo — {elapsed:5.0f} s of {total:.0f} s", title_justify="left")
    for col in ("peer", "member", "round", "H", "loss", "eval loss", "group", "sent", "θ hash", "state"):
        t.add_column(col, justify="right" if col not in ("member", "θ hash", "state", "peer") else "left")
    for p in peers:
        rows = read_metrics(p.home)
        start = next((r for r in rows if r.get("event") == "start"), {})
        last = next((r for r in reversed(rows) if r.get("event") == "round"), None)
        member = str(start.get("member", ""))[-8:]
        state = "running" if p.alive() else f"exited {p.proc.returncode if p.proc else ''}"
        label = f"{p.name} [red]{p.attack}[/red]" if p.attack else p.name
        if last is None:
            t.add_row(
                label,
                member,
                "-",
                "-",
                "-",
                f"{start.get('eval_loss', float('nan')):.3f}" if start else "-",
                "-",
                "-",
                "-",
                state if start else "starting",
            )
        else:
            t.add_row(
                label,
                member,
                str(last["round"]),
                str(last.get("inner_steps", "-")),
                f"{last['loss']:.3f}",
                f"{last['eval_loss']:.3f}",
                str(last["peers"]),
                f"{last['bytes_sent'] / 1e6:.1f} MB",
                str(last["theta"])[:12],
                state,
            )
    return t


def summarize(peers: list[LocalPeer], workdir: Path) -> dict:
    per_peer = {f"peer-{p.index}": read_metrics(p.home) for p in peers}
    starts = {k: next((r for r in v if r.get("event") == "start"), None) for k, v in per_peer.items()}
    rounds = {k: [r for r in v if r.get("event") == "round"] for k, v in per_peer.items()}
    ckpts = {k: [r for r in v if r.get("event") == "checkpoint"] for k, v in per_peer.items()}
    first = next((s for s in starts.values() if s), {}) or {}
    finals = {k: v[-1] for k, v in rounds.items() if v}
    theta = {k: (ckpts[k][-1]["theta"] if ckpts[k] else finals[k]["theta"]) for k in finals}
    final_round = {k: (ckpts[k][-1]["round"] if ckpts[k] else finals[k]["round"]) for k in finals}
    ref = max(finals, key=lambda k: finals[k]["round"]) if finals else None
    summary = {
        "workdir": str(workdir),
        "eval_loss_start": first.get("eval_loss"),
        "eval_loss_end": finals[ref]["eval_loss"] if ref else None,
        "rounds": max((f["round"] for f in finals.values()), default=0),
        "tokens": sum(f["tokens"] for f in finals.values()),
        "bytes_sent": sum(f["bytes_sent"] for f in finals.values()),
        "bytes_sent_per_peer": {k: f["bytes_sent"] for k, f in finals.items()},
        "peers": len(peers),
        "peers_joined": sum(1 for s in starts.values() if s),
        "peers_left": sum(1 for p in peers if p.proc is not None and p.proc.returncode == 0),
        "theta_hash": theta,
        "final_round": final_round,
        "theta_identical": len(set(theta.values())) == 1 and len(theta) == len(peers),
        "rejected_parts": sum(f.get("rejected", 0) for f in finals.values()),
        "checkpoint": ckpts[ref][-1]["path"] if ref and ckpts[ref] else None,
        "loss_plot": str(workdir / "loss.png"),
    }
    _plot(rounds, starts, workdir / "loss.png")
    return summary


def summarize_verification(peers: list[LocalPeer]) -> dict:
    """Spot-checks and verified credit after the run, from peer-0's final ledger (what `koinon credit` shows)."""
    from koinon.cli.gov_cmds import credit_dict, open_view

    names = {}
    for p in peers:
        member = next((r["member"] for r in read_metrics(p.home) if r.get("event") == "start"), None)
        if member:
            names[str(member)] = p.name
    try:
        with open_view(peers[0].home) as view:
            credit = credit_dict(view.state)
            statuses: dict[str, int] = {}
            for c in view.state.trust.history:
                statuses[c.status] = statuses.get(c.status, 0) + 1
    except Exception as e:
        return {"error": str(e), "members": [], "checks": {}}
    rows = [dict(row, peer=names.get(row["member"], row["member"][-8:])) for row in credit["members"]]
    return {"round": credit["round"], "total": credit["total"], "members": rows, "checks": statuses}


def summarize_attack(peers: list[LocalPeer], reducer: str, verification: dict | None = None) -> dict:
    """What ``--attack`` did: which peer attacked and how, the reducer in force, how many parts the honest peers
    rejected (metrics ``rejected``; and how many of their log lines name the attacker), and whether the honest
    peers' eval loss still fell and their θ stayed finite (a NaN or Inf in θ makes the eval loss NaN) and
    identical."""
    attacker = next(p for p in peers if p.attack)
    honest = [p for p in peers if not p.attack]
    member = str(next((r["member"] for r in read_metrics(attacker.home) if r.get("event") == "start"), ""))
    rows = {p.name: read_metrics(p.home) for p in honest}
    rounds = {k: [r for r in v if r.get("event") == "round"] for k, v in rows.items()}
    start = next((r["eval_loss"] for v in rows.values() for r in v if r.get("event") == "start"), None)
    finals = {k: v[-1] for k, v in rounds.items() if v}
    ref = max(finals, key=lambda k: finals[k]["round"]) if finals else None
    end = finals[ref]["eval_loss"] if ref else None
    named = 0
    if member:
        needle = f"rejected pseudo-gradient part from peer {member}"
        for p in honest:
            log = p.home / "peer.log"
            named += log.read_text(errors="replace").count(needle) if log.exists() else 0
    finite = bool(finals) and all(math.isfinite(r["eval_loss"]) for v in rounds.values() for r in v)
    fell = start is not None and end is not None and math.isfinite(end) and end < start
    identical = len(finals) == len(honest) and len({f["theta"] for f in finals.values()}) == 1
    rejected = sum(int(f.get("rejected", 0)) for f in finals.values())
    row = next((r for r in (verification or {}).get("members", []) if r["member"] == member), None)
    convicted = int(row["failed"]) if row else 0
    if fell and finite and identical:
        verdict = "caught" if rejected or named or convicted else "out-voted"
    else:
        verdict = "not contained"
    return {
        "peer": attacker.name,
        "member": member,
        "kind": attacker.attack,
        "reducer": reducer,
        "rounds": len({r["round"] for r in read_metrics(attacker.home) if r.get("event") == "round"}),
        "rounds_counted": len({r["round"] for v in rounds.values() for r in v if member in r.get("contributors", [])}),
        "rejected_parts": rejected,
        "rejected_parts_naming_attacker": named,
        "convicted_by_spot_checks": convicted,
        "credit": row["credit"] if row else 0,
        "excluded_until": row["excluded_until"] if row else None,
        "eval_loss_start": start,
        "eval_loss_end": end,
        "eval_loss_fell": fell,
        "theta_finite": finite,
        "honest_theta_identical": identical,
        "honest_peers": [p.name for p in honest],
        "verdict": verdict,
    }


def _plot(rounds: dict[str, list[dict]], starts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, rows in rounds.items():
        if rows:
            ax.plot([r["round"] for r in rows], [r["loss"] for r in rows], alpha=0.5, label=f"{name} train (inner)")
    ref = max(rounds, key=lambda k: len(rounds[k]), default=None)
    if ref and rounds[ref]:
        xs = [0] + [r["round"] for r in rounds[ref]]
        ys = [(starts.get(ref) or {}).get("eval_loss")] + [r["eval_loss"] for r in rounds[ref]]
        ax.plot(xs, ys, "k-", linewidth=2, label="eval loss (held out, shared θ)")
    ax.set_xlabel("round")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.set_title("Koinon demo: DiLoCo over hivemind")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _audit(home: Path) -> dict:
    """Audit one peer's ledger offline, as anyone could with ``koinon audit --home``."""
    from koinon.errors import AuditFailure
    from koinon.ledger.audit import audit_store_file

    try:
        report = audit_store_file(home / "ledger.sqlite")
    except AuditFailure as e:
        return {"ok": False, "error": str(e), "home": str(home)}
    return {
        "ok": True,
        "home": str(home),
        "swarm": report.swarm,
        "events": report.events,
        "final_events": report.final_events,
        "final_cut": report.final_cut,
        "log_root": report.log_root,
        "members": len(report.members),
        "summary": report.summary(),
    }


def _print_summary(s: dict) -> None:
    console.rule("[bold]Summary")
    console.print(f"eval loss     {s['eval_loss_start']:.3f} → {s['eval_loss_end']:.3f}  (held-out bytes, nats/byte)")
    console.print(f"rounds        {s['rounds']}")
    console.print(f"tokens        {s['tokens']:,} trained by all peers together")
    console.print(
        f"bytes sent    {s['bytes_sent'] / 1e6:.1f} MB in all "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in s['bytes_sent_per_peer'].items())})"
    )
    console.print(f"peers         {s['peers_joined']} joined, {s['peers_left']} left cleanly")
    if s["theta_identical"]:
        h = next(iter(s["theta_hash"].values()))
        console.print(
            f"final θ       {h[:16]}… at round {next(iter(s['final_round'].values()))} — "
            f"[green]identical on all {len(s['theta_hash'])} peers[/green]"
        )
    else:
        console.print("final θ       [red]NOT identical[/red] across peers:")
        for k, v in s["theta_hash"].items():
            console.print(f"              {k}: {v[:16]}… (round {s['final_round'][k]})")
    console.print(f"loss plot     {s['loss_plot']}")
    console.print(f"checkpoint    {s['checkpoint']}")
    console.print(f"peer homes    {s['workdir']}/peer-*  (logs: peer.log, metrics: metrics.jsonl)")
    if s.get("verification"):
        _print_verification(s["verification"])
    if s.get("attack"):
        _print_attack(s["attack"])
    for d in s.get("decisions", []):
        console.rule("[bold]Governance (the swarm decided during the run)")
        console.print(f"proposal      {d['id'][:16]}… by {d['proposer']}: {d.get('title', '')}")
        t = d.get("tally")
        if t:
            console.print(
                f"tally         yes {t['yes']} · no {t['no']} · abstain {t['abstain']} of {t['total']} "
                f"(quorum {d['quorum'][0]}/{d['quorum'][1]}, threshold {d['threshold'][0]}/{d['threshold'][1]}); "
                f"votes {', '.join(f'{k} {v}' for k, v in d['votes'].items()) or '-'}"
            )
        console.print(f"state         {d['state']}: {d.get('reason', '')}")
        rounds = d["effective_round"]
        if all(v is not None for v in rounds.values()) and len(set(rounds.values())) == 1:
            console.print(
                f"in force      H = {d['effect']['inner_steps']} from round {next(iter(rounds.values()))} "
                f"[green]on every peer[/green]"
            )
        else:
            console.print(
                "in force      "
                + ", ".join(f"{k}: {'round ' + str(v) if v is not None else 'not yet'}" for k, v in rounds.items())
            )
        if d.get("error"):
            console.print(f"[yellow]note[/yellow]          {d['error']}")
    ledger = s["ledger"]
    console.rule(f"[bold]Ledger audit of peer-0 (koinon audit --home {ledger['home']})")
    if ledger["ok"]:
        console.print(ledger["summary"], markup=False, highlight=False)
    else:
        console.print(f"[red]audit FAILED[/red]: {ledger['error']}")


def _reducer_in_force(args: argparse.Namespace) -> str:
    """``--reducer``, or the configuration's default."""
    from koinon.config import TrainingConfig

    return str(getattr(args, "reducer", None) or TrainingConfig().reducer)


def _print_verification(v: dict) -> None:
    console.rule("[bold]Verification (spot-checks by re-execution; koinon credit)")
    if v.get("error"):
        console.print(f"[red]could not read the ledger[/red]: {v['error']}")
        return
    checks = ", ".join(f"{n} {k}" for k, n in sorted(v["checks"].items())) or "none resolved yet"
    console.print(f"checks        {checks}")
    for row in v["members"]:
        penalty = f", excluded until round {row['excluded_until']}" if row["excluded_until"] is not None else ""
        console.print(
            f"{row['peer']:<13} credit {row['credit']:>6,} samples ({row['share_permille'] / 10:.1f} %) · "
            f"{row['commits']} commits, {row['sampled']} checked: {row['verified']} passed, {row['failed']} failed, "
            f"{row['false_accusations']} false accusations{penalty}"
        )


def _print_attack(a: dict) -> None:
    def yes(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    console.rule(f"[bold]Byzantine peer (koinon demo --attack {a['kind']})")
    console.print(
        f"attacker      {a['peer']} ({a['member'][-8:]}) sent {a['kind']} pseudo-gradients; they counted with "
        f"full weight in {a['rounds_counted']} of its {a['rounds']} rounds"
    )
    console.print(f"reducer       {a['reducer']}")
    console.print(
        f"rejected      {a['rejected_parts']} parts by the honest peers "
        f"({a['rejected_parts_naming_attacker']} log lines name {a['peer']})"
    )
    start, end = a["eval_loss_start"], a["eval_loss_end"]
    losses = f"{start:.3f} → {end:.3f}" if start is not None and end is not None else "-"
    console.print(f"eval loss     {losses} on the honest peers; fell: {yes(a['eval_loss_fell'])}")
    console.print(
        f"θ             finite: {yes(a['theta_finite'])}; identical on the {len(a['honest_peers'])} honest peers: "
        f"{yes(a['honest_theta_identical'])}"
    )
    if a.get("convicted_by_spot_checks"):
        console.print(
            f"spot-checks   convicted {a['convicted_by_spot_checks']} time(s); its verified credit: {a['credit']}"
        )
    verdict = {
        "caught": "[green]caught[/green]: its parts were rejected or its claimed work failed the spot-checks, and "
        "training went on",
        "out-voted": "[green]out-voted[/green] by the reducer: training went on",
    }.get(a["verdict"], "[red]not contained[/red]: the attack hurt the honest peers")
    console.print(f"verdict       {verdict}")


def _dashboard_url(home: Path, timeout: float = 20.0) -> str | None:
    """peer-0's dashboard address with its token (it writes both when the dashboard is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = (home / "dashboard.url").read_text().strip()
            token = (home / "dashboard.token").read_text().strip()
            return f"{url}?token={token}"
        except OSError:
            time.sleep(0.2)
    return None


def run_demo(args: argparse.Namespace) -> int:
    if args.peers < 1:
        raise ConfigError("--peers must be at least 1")
    if args.minutes <= 0:
        raise ConfigError("--minutes must be positive")
    workdir = args.workdir or Path("runs") / datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    if args.data:
        extra += ["--data", *map(str, args.data)]
    for flag, value in (
        ("--inner-steps", args.inner_steps),
        ("--model-size", args.model_size),
        ("--compression", args.compression),
        ("--reducer", getattr(args, "reducer", None)),
    ):
        if value is not None:
            extra += [flag, str(value)]
    attack = getattr(args, "attack", None)
    dashboard = getattr(args, "dashboard", "off")
    board = ["--dashboard", dashboard] if dashboard and dashboard != "off" else []
    found = board + ["--min-contributors", str(min(3, args.peers))]  # a round needs min(3, peers) contributors
    peers = [LocalPeer(i, workdir / f"peer-{i}", extra + (found if i == 0 else [])) for i in range(args.peers)]
    if attack:  # one more peer, Byzantine on purpose; it votes "no" in the governance script (the last peer)
        peers.append(LocalPeer(args.peers, workdir / f"peer-{args.peers}", extra, attack=attack))
    threads = max(1, (os.cpu_count() or 1) // len(peers))
    console.print(
        f"[bold]Koinon demo[/bold]: {args.peers} peers on 127.0.0.1 for {args.minutes:g} min; peer homes in {workdir}"
        + (f"\nand a Byzantine peer-{args.peers} that sends {attack} pseudo-gradients" if attack else "")
    )
    governance = ScriptedGovernance(peers, args.inner_steps or 50)
    total = args.minutes * 60
    try:
        peers[0].start([], len(peers), threads)
        bootstrap = peers[0].maddrs(timeout=120)
        console.print(f"peer-0 is up: {bootstrap[0]}")
        if board:
            url = _dashboard_url(peers[0].home)
            console.print(
                f"dashboard: {url}" if url else "dashboard: not up (see peer-0/peer.log)", markup=False, soft_wrap=True
            )
        for p in peers[1:]:
            p.start(bootstrap, len(peers), threads)
        t0 = time.monotonic()
        with Live(_table(peers, 0, total), console=console, refresh_per_second=2) as live:
            while time.monotonic() - t0 < total and any(p.alive() for p in peers):
                time.sleep(1)
                governance.step()
                live.update(_table(peers, time.monotonic() - t0, total))
            # time is up: everybody finishes the next round, then leaves
            last = max(
                (r["round"] for p in peers for r in read_metrics(p.home) if r.get("event") == "round"), default=0
            )
            for p in peers:
                p.stop_after(last + 1)
            deadline = time.monotonic() + 120
            while any(p.alive() for p in peers) and time.monotonic() < deadline:
                time.sleep(1)
                live.update(_table(peers, time.monotonic() - t0, total))
    except KeyboardInterrupt:
        console.print("interrupted: stopping peers")
    finally:
        for p in peers:
            p.signal(signal.SIGINT)
        end = time.monotonic() + 30
        while any(p.alive() for p in peers) and time.monotonic() < end:
            time.sleep(0.5)
        for p in peers:
            p.signal(signal.SIGKILL)
            if p.proc is not None:
                p.proc.wait()
    summary = summarize(peers, workdir)
    summary["decisions"] = governance.summary()
    summary["ledger"] = _audit(peers[0].home)
    summary["verification"] = summarize_verification(peers)
    if attack:
        summary["attack"] = summarize_attack(peers, _reducer_in_force(args), summary["verification"])
    _print_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"summary JSON  {args.summary_json}")
    return 0 if summary["eval_loss_end"] is not None and summary["ledger"]["ok"] else 1
