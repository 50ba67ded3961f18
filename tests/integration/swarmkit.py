"""Run real Koinon peers as separate processes (``python -m koinon start``) for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

FAST = ["--inner-steps", "10", "--threads", "1", "--matchmaking-time", "1", "--averaging-timeout", "20"]


class PeerProcess:
    def __init__(
        self,
        home: Path,
        initial_peers: list[str] | None = None,
        extra: list[str] | None = None,
        wrapper: list[str] | None = None,
        listen: str = "/ip4/127.0.0.1/tcp/0",
    ) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            *(wrapper or []),
            sys.executable,
            "-m",
            "koinon",
            "start",
            "--home",
            str(self.home),
            "--listen",
            listen,
            *(extra if extra is not None else FAST),
        ]
        if initial_peers:
            cmd += ["--initial-peers", *initial_peers]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log = open(self.home / "peer.log", "ab")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def maddrs(self, timeout: float = 90) -> list[str]:
        wait_until(
            lambda: (self.home / "maddrs").exists() and (self.home / "maddrs").read_text().strip(),
            timeout,
            f"{self.home.name} to print its address",
            self,
        )
        return (self.home / "maddrs").read_text().split()

    def metrics(self, event: str | None = None) -> list[dict]:
        path = self.home / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return [r for r in rows if event is None or r.get("event") == event]

    def rounds(self) -> dict[int, dict]:
        return {r["round"]: r for r in self.metrics("round")}

    def last_round(self) -> int:
        return max(self.rounds(), default=0)

    def group_pids(self) -> set[int]:
        return processes_in_group(self.pgid)

    def kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30) -> int | None:
        self.kill_group(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group(signal.SIGKILL)
            self.proc.wait()
            return None
        finally:
            self.log.close()

    def log_tail(self, n: int = 3000) -> str:
        path = self.home / "peer.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


def stop_all(peers: list[PeerProcess], timeout: float = 60) -> list[int | None]:
    """SIGINT every running peer at once, then wait for each (a peer's clean exit takes a few seconds: in parallel,
    not one after the other); SIGKILL whatever is still running after ``timeout``. Exit codes in order."""
    running = [p for p in peers if p.proc.poll() is None]
    for p in running:
        p.kill_group(signal.SIGINT)
    deadline = time.monotonic() + timeout
    codes = []
    for p in peers:
        if p in running:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill_group(signal.SIGKILL)
                p.proc.wait()
                codes.append(None)
                # shown with a failing test: what it was doing (a peer slow to leave dumps its threads' stacks)
                print(f"--- {p.home.name} did not leave within {timeout:.0f} s; its log ends:\n{p.log_tail(8000)}")
                p.log.close()
                continue
            p.log.close()
        codes.append(p.proc.returncode)
    return codes


def processes_in_group(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, group = line.split()
        if int(group) == pgid:
            pids.add(int(pid))
    return pids


def p2pd_pids(under: Path | None = None) -> set[int]:
    """p2pd processes; with ``under``, only those whose command line names a path below it (their identity file
    lives in the peer's home), so a test is not confused by daemons that other programs on the machine run."""
    out = subprocess.run(["pgrep", "-af", "p2pd"], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if "p2pd" in cmd and (under is None or str(under) in cmd):
            pids.add(int(pid))
    return pids


def wait_until(predicate: Callable[[], object], timeout: float, what: str, *peers: PeerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in peers:
            if p.proc.poll() is not None:
                raise AssertionError(
                    f"{p.home.name} exited ({p.proc.returncode}) while waiting for {what}:\n{p.log_tail()}"
                )
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.home.name}\n{p.log_tail()}" for p in peers)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
