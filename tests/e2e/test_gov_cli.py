"""`koinon init`, `propose`, `vote`, `delegate`, `proposals`, `proposal`, `charter` and `credit` as a user types them.

A swarm is founded with `koinon init` (a fresh interpreter) from a charter with short windows (delay 1, window 4,
timelock 1, epochs of 1 s). Finality needs cuts, so :class:`Swarm` plays the running peers in-process: it opens
the member folder's ledger with a :class:`LedgerNode` on a fake clock that jumps one epoch per step, appends a
filler event each step (a cut is made only when there is something new to finalise) and ticks, so every step
adds one cut and the cut before the newest becomes final. Other members live in in-memory stores synced with the
folder's. Most commands run in-process through ``koinon.cli.main.main`` (fast); a few run as subprocesses, as a
user would, including one through the outbox of a "running peer" (a thread holding ``peer.lock``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tomllib

from koinon.governance.charter import default_charter_text
from koinon.identity import Identity
from koinon.ledger.node import LedgerNode
from koinon.ledger.outbox import Outbox, exclusive
from koinon.ledger.store import LedgerStore
from tests.sim.fakenet import identity_from_seed

CHARTER = """
name = "gov-e2e"
[rules]
delay = 1
window = 4
timelock = 1
epoch_ms = 1000
quorum = "1/3"
threshold = "1/2"
[training]
inner_steps = 50
"""
PROPOSAL_ID = re.compile(r"^proposal ([0-9a-f]{64})", re.M)


def koinon(*args: object, home: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, KOINON_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "koinon", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )


def one_error_line(code: int, stderr: str, *fragments: str) -> str:
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("koinon: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def count(home: Path, kind: str | None = None) -> int:
    store = LedgerStore(home / "ledger.sqlite")
    try:
        return sum(1 for _ in store.iter_events(kind=kind))
    finally:
        store.close()


class Swarm:
    """The folder's member (and ``others``) making cuts on a fake clock, one per step."""

    def __init__(self, home: Path, others: int = 0) -> None:
        self.home = home
        self.ms = (int(time.time() * 1000) // 1000 + 1) * 1000
        self.others = []
        for i in range(others):
            store = LedgerStore(":memory:", clock=self.now_s)
            self.others.append(LedgerNode(store, identity_from_seed(f"gov-e2e-{i}"), self.now_ms, epoch_ms=1000))

    def now_ms(self) -> int:
        return self.ms

    def now_s(self) -> float:
        return self.ms / 1000

    def _open(self) -> LedgerNode:
        store = LedgerStore(self.home / "ledger.sqlite", clock=self.now_s)
        return LedgerNode(store, Identity.load(self.home), self.now_ms, epoch_ms=1000)

    @staticmethod
    def _sync(nodes: list[LedgerNode]) -> None:
        for x in nodes:
            for y in nodes:
                if x is not y:
                    x.sync_with(y.me, lambda request, x=x, y=y: y.handle(x.me, request))

    def step(self, n: int = 1, **appends: tuple[int, str, dict]) -> None:
        """``n`` epochs, each with a filler event and (usually) one new cut; the folder's store is closed after."""
        founder = self._open()
        nodes = [founder, *self.others]
        try:
            self._sync(nodes)
            for _ in range(n):
                founder.append_own("join", {"maddrs": []})
                self.ms += 1000
                for _ in range(2):  # the leader proposes, the others cosign once they have the cut
                    for node in nodes:
                        node.tick()
                    self._sync(nodes)
        finally:
            founder.store.close()

    def append(self, other: int, kind: str, body: dict) -> None:
        founder = self._open()
        try:
            self._sync([founder, *self.others])
            self.others[other].append_own(kind, body)
            self._sync([founder, *self.others])
        finally:
            founder.store.close()

    def append_mine(self, kind: str, body: dict) -> bytes:
        """The folder's member appends an event (as its running peer would); returns the event id."""
        founder = self._open()
        try:
            return founder.append_own(kind, body).id
        finally:
            founder.store.close()

    def final_state(self):
        founder = self._open()
        try:
            return founder.chain.final_governance()
        finally:
            founder.store.close()

    def final_index(self) -> int:
        return self.final_state().index


@pytest.fixture(scope="module")
def founded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gov-cli")
    (root / "charter.toml").write_text(CHARTER)
    home = root / "home"
    result = koinon("init", "gov-e2e", "--charter", root / "charter.toml", "--home", home, home=home)
    assert result.returncode == 0, result.stderr
    (root / "init.out").write_text(result.stdout)
    return home


@pytest.fixture
def home(founded: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    shutil.copytree(founded, folder)
    return folder


def propose(cli, home: Path, *argv: object) -> str:
    code, out, err = cli("propose", *argv, "--home", home)
    assert code == 0, err
    return PROPOSAL_ID.search(out).group(1)


# --- tests ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [["init"], ["propose"], ["propose", "set-config"], ["propose", "amend-charter"], ["vote"], ["delegate"]]
    + [["proposals"], ["proposal"], ["charter"], ["credit"]],
)
def test_every_command_has_help_with_an_example(cli, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli(*argv, "--help")
    assert exit_.value.code == 0


def test_init_prints_the_swarm_id_and_refuses_a_second_time(founded: Path) -> None:
    out = (founded.parent / "init.out").read_text()
    store = LedgerStore(founded / "ledger.sqlite")
    try:
        charter = store.charter()
    finally:
        store.close()
    me = Identity.load(founded).member_id
    assert f"swarm id  {charter.id.hex()}" in out
    assert f"{me} (you)" in out and charter.body["founders"] == [me]
    assert "voting window: 4 cuts (≈ 4 s at one cut per 1000 ms epoch)" in out
    assert "inner_steps=50" in out
    assert f"koinon start --home {founded} --swarm gov-e2e" in out
    assert f"--swarm-id {charter.id.hex()}" in out
    assert "warning" not in out
    again = koinon("init", "other", "--home", founded, home=founded)
    one_error_line(again.returncode, again.stderr, "already holds swarm 'gov-e2e'", charter.id.hex())
    assert count(founded) == 1


def test_init_with_the_example_charter_and_a_credit_weight_warning(cli, tmp_path: Path) -> None:
    code, out, err = cli("init", "mine", "--home", tmp_path / "a")
    assert code == 0, err
    window = tomllib.loads(default_charter_text())["rules"]["window"]
    assert "founded swarm 'mine'" in out and f"voting window: {window} cuts" in out and "warning" not in out
    (tmp_path / "c.toml").write_text('[rules]\nweight = "quadratic"\n')
    code, out, err = cli("init", "--charter", tmp_path / "c.toml", "--home", tmp_path / "b")
    assert code == 0, err
    assert "founded swarm 'koinon'" in out
    assert "earn only once their training work passes spot-checks (`koinon credit`): until then nobody can vote" in out
    (tmp_path / "bad.toml").write_text("[rules]\nwindow = 0\n")
    code, _, err = cli("init", "--charter", tmp_path / "bad.toml", "--home", tmp_path / "c")
    one_error_line(code, err, "window must be at least 1")
    assert not (tmp_path / "c" / "ledger.sqlite").exists()


def test_bad_proposals_are_refused_before_signing(cli, home: Path) -> None:
    before = count(home)
    result = koinon("propose", "set-config", "--set", "H=0", home=home)  # H: DiLoCo's name for inner_steps
    one_error_line(result.returncode, result.stderr, "inner_steps must be at least 1")
    cases = [
        (["set-config", "--set", "nope=1"], "unknown config key 'nope'"),
        (["set-config", "--set", "seq_len=64"], "seq_len cannot change in a running swarm"),
        (["set-config", "--set", "inner_steps=1.5"], "inner_steps must be an integer"),
        (["set-config", "--set", "outer_lr=fast"], "outer_lr must be a decimal number"),
        (["amend-charter", "--set", "epoch_ms=500"], "epoch_ms cannot be amended"),
        (["amend-charter", "--set", "threshold=3/2"], "between 0 and 1"),
        (["amend-charter", "--set", "speed=2"], "unknown charter rule 'speed'"),
        (["expel", "12D3KooWnotamember"], "not a valid member id"),
        (["expel", "abc"], "neither a member id"),
        (["release", "--checkpoint", "abc", "--tag", "v1", "--license", "MIT"], "64 hex digits"),
        (["resolution"], "a resolution needs its text"),
    ]
    for argv, fragment in cases:
        code, _, err = cli("propose", *argv, "--home", home)
        one_error_line(code, err, fragment)
    assert count(home) == before, "a refused proposal must append nothing"


def test_a_non_member_cannot_propose(cli, home: Path, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    shutil.copy(home / "ledger.sqlite", stranger / "ledger.sqlite")
    Identity.create(stranger)
    code, _, err = cli("propose", "resolution", "--text", "Hello", "--home", stranger)
    one_error_line(code, err, "are not a member of this swarm", "koinon start --initial-peers")
    assert count(stranger) == 1


def test_propose_vote_tally_and_execute(cli, home: Path) -> None:
    swarm = Swarm(home)
    pid = propose(cli, home, "set-config", "--set", "inner_steps=100", "--text", "Longer rounds\nH=100 halves traffic")
    code, out, _ = cli("proposal", pid[:8], "--home", home)
    assert "(not final: not in a final cut yet)" in out and "H=100 halves traffic" in out
    code, out, _ = cli("proposals", "--home", home)
    assert code == 0 and f"{pid[:12]} set-config    not final" in out
    assert "1 governance event(s) (1 of yours) are not in a final cut yet" in out
    code, _, err = cli("vote", pid[:10], "yes", "--home", home)
    one_error_line(code, err, "not in a final cut yet", "try again then")

    swarm.step(3)  # cuts #0 (includes the proposal) to #2; #0 and #1 final: the window (#1–#4) is open
    code, out, _ = cli("proposals", "--home", home)
    assert f"{pid[:12]} set-config    active        0    0    0  #1–#4       Longer rounds" in out
    stranger = home.parent / "stranger"
    stranger.mkdir()
    shutil.copy(home / "ledger.sqlite", stranger / "ledger.sqlite")
    Identity.create(stranger)
    code, _, err = cli("vote", pid[:8], "yes", "--home", stranger)
    one_error_line(code, err, "were not a member when voting on proposal", "opened at cut #1")
    before = count(home, "vote")
    code, out, err = cli("vote", pid[:8], "yes", "--home", home)
    assert code == 0, err
    assert f"voted yes on proposal {pid[:12]} (Longer rounds)" in out and "through the peer" not in out
    assert count(home, "vote") == before + 1

    swarm.step(3)  # the vote lands in cut #3; the window closes at #4, final now that #5 exists
    code, out, _ = cli("proposal", pid[:8], "--json", "--home", home)
    d = json.loads(out)
    assert d["state"] == "queued" and d["tally"]["yes"] == 1 and d["tally"]["no"] == 0
    assert d["cuts"] == {"included": 0, "open": 1, "close": 4, "execute_at": 5}
    assert d["votes"][0]["choice"] == "yes" and d["effect"] == {"changes": {"inner_steps": 100}}

    swarm.step(1)
    assert swarm.final_index() == 5
    code, out, _ = cli("proposal", pid[:8], "--home", home)
    assert code == 0 and f"proposal {pid}" in out
    assert "state     executed: configuration" in out and "(inner_steps=100)" in out
    assert "tally     yes 1, no 0, abstain 0 (1 of 1 weight cast)" in out
    assert "history   cut #0: pending, cut #1: active, cut #4: passed, cut #4: queued, cut #5: executed" in out
    code, out, _ = cli("proposals", "--home", home)
    assert "no open proposals" in out
    code, out, _ = cli("proposals", "--all", "--home", home)
    assert f"{pid[:12]} set-config    executed      1    0    0" in out

    code, out, _ = cli("charter", "--home", home)
    assert "inner_steps=100" in out and f"set by proposal {pid[:12]} at cut #5" in out
    assert "decisions 1" in out and "rules in force (as founded)" in out
    code, out, _ = cli("charter", "--json", "--home", home)
    assert json.loads(out)["config"]["inner_steps"] == 100

    code, _, err = cli("vote", pid, "no", "--home", home)
    one_error_line(code, err, f"proposal {pid[:12]} is closed (executed")
    code, _, err = cli("vote", "deadbeefdeadbeef", "yes", "--home", home)
    one_error_line(code, err, "no proposal with id deadbeefdeadbeef")
    code, _, err = cli("vote", pid[:6], "yes", "--home", home)
    one_error_line(code, err, "too short")


def test_a_vote_after_the_window_is_refused(cli, home: Path) -> None:
    swarm = Swarm(home)
    code, out, err = cli("propose", "--home", home, "resolution", "--text", "Nobody votes on this")  # --home first
    assert code == 0, err
    pid = PROPOSAL_ID.search(out).group(1)
    swarm.step(5)  # cuts #0–#4 exist: the next cut is #5, after the window #1–#4
    code, _, err = cli("vote", pid[:8], "yes", "--home", home)
    one_error_line(code, err, "closes at cut #4 and the next cut is #5")
    swarm.step(1)
    code, out, _ = cli("proposal", pid[:8], "--home", home)
    assert "state     expired: no quorum: 0 of 1 weight voted" in out


def test_delegate_revoke_and_a_vote_through_a_delegate(cli, home: Path) -> None:
    swarm = Swarm(home, others=1)
    other = swarm.others[0].me
    swarm.append(0, "join", {"maddrs": []})
    swarm.step(3)
    code, out, _ = cli("charter", "--home", home)
    assert "members   2:" in out
    code, _, err = cli("delegate", "--revoke", "--home", home)
    one_error_line(code, err, "no delegation to revoke")
    code, _, err = cli("delegate", Identity.load(home).member_id, "--home", home)
    one_error_line(code, err, "cannot delegate to yourself")
    code, _, err = cli("delegate", identity_from_seed("nobody").member_id, "--home", home)
    one_error_line(code, err, "is not a member")

    code, out, err = cli("delegate", other[-10:], "--home", home)  # the id's tail is enough
    assert code == 0 and f"delegated your votes to {other}" in out, err
    swarm.step(3)
    code, out, _ = cli("charter", "--json", "--home", home)
    assert json.loads(out)["delegations"] == {Identity.load(home).member_id: other}

    pid = propose(cli, home, "resolution", "--text", "Delegation works")
    swarm.step(3)
    swarm.append(0, "vote", {"proposal": bytes.fromhex(pid), "choice": "no"})
    swarm.step(5)
    code, out, _ = cli("proposal", pid[:8], "--json", "--home", home)
    d = json.loads(out)
    me = Identity.load(home).member_id
    assert d["delegated"] == [{"member": me, "via": other, "choice": "no"}]
    assert d["tally"]["no"] == 2 and d["state"] == "rejected"

    code, out, err = cli("delegate", "--revoke", "--home", home)
    assert code == 0 and "revoked your delegation" in out, err
    swarm.step(3)
    code, out, _ = cli("charter", "--json", "--home", home)
    assert json.loads(out)["delegations"] == {}


def test_vote_goes_through_the_outbox_of_a_running_peer(cli, home: Path) -> None:
    swarm = Swarm(home)
    pid = propose(cli, home, "admit", identity_from_seed("newcomer").member_id, "--text", "Welcome")
    swarm.step(3)
    stop, ready, drained = threading.Event(), threading.Event(), []

    def peer() -> None:  # what `koinon start` does: hold the lock for its life, drain the outbox
        with exclusive(home) as mine:
            assert mine
            store = LedgerStore(home / "ledger.sqlite")
            node = LedgerNode(store, Identity.load(home), lambda: int(time.time() * 1000), epoch_ms=1000)
            outbox = Outbox(home, node.append_own)
            ready.set()
            try:
                while not stop.is_set():
                    drained.append(outbox.drain())
                    time.sleep(0.05)
            finally:
                store.close()

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        result = koinon("vote", pid[:8], "abstain", "--home", home, home=home)
    finally:
        stop.set()
        thread.join(10)
    assert result.returncode == 0, result.stderr
    assert f"through the peer running on {home}" in result.stdout and sum(drained) == 1
    store = LedgerStore(home / "ledger.sqlite")
    try:
        votes = list(store.iter_events(kind="vote"))
    finally:
        store.close()
    assert len(votes) == 1 and votes[0].body == {"proposal": bytes.fromhex(pid), "choice": "abstain"}
    assert not list((home / "outbox").glob("*")), "the request and its answer are cleaned up"


# --- credit ---------------------------------------------------------------------------------------------------------
CREDIT_CHARTER = (
    CHARTER.replace('name = "gov-e2e"', 'name = "credit-e2e"') + "verify_permille = 1000\npenalty_rounds = 2\n"
)


def commit_body(round_no: int, samples: int) -> dict:
    h = bytes(range(32))
    return {
        "round": round_no,
        "theta": h,
        "config": h,
        "data": [],
        "group": [],
        "shards": bytes(32),
        "seed": h,
        "step0": 0,
        "steps": 4,
        "samples": samples,
        "trace": [h] * 4,  # one segment: (parameters, moments) at its two ends
        "delta": h,
    }


def verdict_body(commit: bytes, ok: bool, error: int = 0) -> dict:
    return {"commit": commit, "ok": ok, "error": error, "got": bytes(32)}


def test_credit_on_a_fresh_swarm_and_without_a_ledger(cli, home: Path, tmp_path: Path) -> None:
    code, out, err = cli("credit", "--home", home)
    assert code == 0, err
    assert "weight rule: member: one member, one vote" in out
    assert "credit counts only spot-checked, verified work (docs/verification.md)" in out
    assert "no member has committed work yet" in out and "total 0 verified samples; round 0" in out
    code, out, _ = cli("credit", "--json", "--checks", "3", "--home", home)
    assert json.loads(out) == {"round": 0, "weight_rule": "member", "total": 0, "members": [], "checks": []}
    code, _, err = cli("credit", "--checks", "-1", "--home", home)
    one_error_line(code, err, "--checks takes a number of checks")
    missing = tmp_path / "nonexistent"
    result = koinon("credit", "--home", missing, home=tmp_path / "x")
    one_error_line(result.returncode, result.stderr, f"no ledger at {missing / 'ledger.sqlite'}", "koinon init")


def test_credit_counts_verified_samples_and_shows_a_false_accuser_excluded(cli, tmp_path: Path) -> None:
    (tmp_path / "charter.toml").write_text(CREDIT_CHARTER)
    home = tmp_path / "home"
    code, _, err = cli("init", "--charter", tmp_path / "charter.toml", "--home", home)
    assert code == 0, err
    swarm = Swarm(home, others=2)
    me = Identity.load(home).member_id
    ids = [me] + [n.me for n in swarm.others]
    for i in range(2):
        swarm.append(i, "join", {"maddrs": []})
    swarm.step(3)
    assert swarm.final_state().members == set(ids)

    # round 1: everyone commits; every commit is sampled (verify_permille = 1000) once its cut is final
    commits = {me: swarm.append_mine("commit", commit_body(1, 300))}
    for i in range(2):
        swarm.append(i, "commit", commit_body(1, 100))
    swarm.step(2)
    checks = swarm.final_state().trust.checks
    assert len(checks) == 3 and {c.author for c in checks.values()} == set(ids)
    liar = checks[commits[me]].verifier  # accuses the founder's honest commit
    honest = next(m for m in ids if m not in (me, liar))
    assert checks[commits[me]].referees == (honest,)

    def answer(member: str, commit: bytes, ok: bool, error: int = 0) -> None:
        body = verdict_body(commit, ok, error)
        if member == me:
            swarm.append_mine("verdict", body)
        else:
            swarm.append(ids.index(member) - 1, "verdict", body)

    for c in checks.values():
        answer(c.verifier, c.commit, c.author != me, 0 if c.author != me else 5000)
    swarm.step(2)
    accused = swarm.final_state().trust.checks
    assert list(accused) == [commits[me]] and accused[commits[me]].status == "accused"
    answer(honest, commits[me], True)  # the referee re-executes and finds the founder honest
    swarm.step(2)

    code, out, err = cli("credit", "--json", "--checks", "2", "--home", home)
    assert code == 0, err
    d = json.loads(out)
    assert (d["round"], d["weight_rule"], d["total"]) == (1, "member", 400)
    assert [(r["member"], r["credit"], r["share_permille"]) for r in d["members"]] == [
        (me, 300, 750),
        (honest, 100, 250),
        (liar, 0, 0),  # its own verified round-1 credit is forfeited
    ]
    stats = {r["member"]: r for r in d["members"]}
    assert {k: stats[liar][k] for k in ("commits", "sampled", "verified", "failed", "false_accusations")} == {
        "commits": 1,
        "sampled": 1,
        "verified": 1,
        "failed": 0,
        "false_accusations": 1,
    }
    assert stats[liar]["excluded_until"] == 3 and stats[me]["excluded_until"] is None
    assert stats[me]["false_accusations"] == 0 and stats[honest]["verified"] == 1
    assert len(d["checks"]) == 2
    last = d["checks"][-1]
    assert (last["author"], last["status"], last["accuser"], last["samples"]) == (me, "verified", liar, 300)
    assert [(x["member"], x["ok"]) for x in last["verdicts"]] == [(liar, False), (honest, True)]

    code, out, err = cli("credit", "--checks", "1", "--home", home)
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("…")]
    assert rows[0].split()[:5] == [f"…{me[-8:]}", "(you)", "300", "75.0", "%"]
    assert rows[1].split()[:4] == [f"…{honest[-8:]}", "100", "25.0", "%"]
    assert rows[2].split()[:9] == [f"…{liar[-8:]}", "0", "0.0", "%", "1", "1", "1", "0", "1"]
    assert rows[2].endswith("excluded until round 3") and "excluded" not in rows[0] + rows[1]
    assert "total 400 verified samples; round 1" in out
    check_line = next(line for line in lines if line.lstrip().startswith("1 …"))
    assert f"…{me[-8:]} (you)" in check_line and " verified " in check_line
    assert f"…{liar[-8:]} fail (5000 ppm)" in check_line and check_line.endswith(f"…{honest[-8:]} ok")
