"""Process plumbing for the benchmark: every worker or peer runs in its own process group (HIVEMIND.md trap 7),
so stopping it also stops hivemind's forked children and its ``p2pd``; a start barrier lets the timed phase of
concurrent processes begin at the same instant; stale hivemind sockets we leave in /tmp are removed (trap 12)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOCKET_GLOB = "hivemind-*.sock"


class Proc:
    """A child process in a new session (its pid is its process group id), with its output in ``log``."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                start_new_session=True,
            )

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while {what}:\n{self.log_tail()}")

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the group (also after the leader exited: p2pd may outlive it)."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, n: int = 2500) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    procs: Sequence[Proc] = (),
    tick: Callable[[], None] | None = None,
    tick_every: float = 15.0,
) -> None:
    """Poll ``predicate`` until true; fail when a process dies or after ``timeout`` s; call ``tick`` now and then."""
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + tick_every
    while not predicate():
        for p in procs:
            p.check_alive(what)
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs)
            raise TimeoutError(f"timed out after {timeout:.0f} s {what}\n{tails}")
        if tick is not None and time.monotonic() > next_tick:
            tick()
            next_tick = time.monotonic() + tick_every
        time.sleep(0.1)


def wait_exit(procs: Sequence[Proc], timeout: float, what: str, tick: Callable[[], None] | None = None) -> None:
    """Wait until every process has exited by itself; a non-zero exit is an error."""
    wait_for(lambda: all(not p.alive() for p in procs), timeout, what, (), tick)
    for p in procs:
        if p.proc.returncode != 0:
            raise RuntimeError(f"{p.name} exited with {p.proc.returncode}:\n{p.log_tail()}")


class Barrier:
    """Workers write ``ready-<i>`` when set up, then spin on ``go``: their timed phase starts together."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def ready(self, index: int) -> None:
        (self.folder / f"ready-{index}").write_text(str(time.time()))

    def wait_go(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.folder / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the benchmark never said go")
            time.sleep(0.005)

    def all_ready(self, n: int) -> bool:
        return all((self.folder / f"ready-{i}").exists() for i in range(n))

    def go(self) -> None:
        (self.folder / "go").write_text(str(time.time()))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line being written
    return rows


def remove_stale_sockets(candidates: set[Path]) -> int:
    """Remove those of our sockets nobody listens on any more (hivemind leaves them behind, HIVEMIND.md 12)."""
    removed = 0
    for path in candidates:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(str(path))
                continue  # somebody is listening: not ours to remove
            except (ConnectionRefusedError, FileNotFoundError, OSError):
                pass
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def p2pd_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "p2pd"], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def processes_in_groups(pgids: set[int]) -> list[str]:
    """``pid args`` of every process still in one of these process groups."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True).stdout
    left = []
    for line in out.splitlines():
        pid, pgid, *args = line.split(None, 2)
        if int(pgid) in pgids:
            left.append(f"{pid} {' '.join(args)}")
    return left


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(process group, utime + stime in clock ticks) of one process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
    return int(fields[2]), int(fields[11]) + int(fields[12])


def _busy_ticks() -> int:
    """CPU ticks spent by anything on the machine (all of /proc/stat's "cpu" line but idle and iowait)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4]


class Watcher:
    """Watches the benchmark's processes while a variant runs, for two things:

    - how much of the machine's CPU went to processes *outside* the benchmark (other jobs on a shared machine):
      the busy ticks of the whole machine minus those of every process in our process groups (and this one).
      A process that exits between two samples loses at most one interval of CPU, which then counts as
      foreign: the figure is an upper bound;
    - which hivemind unix sockets our processes listen on, so that only those are removed afterwards.
    """

    def __init__(self, pgids: Callable[[], set[int]], interval: float = 0.5) -> None:
        import threading

        self.pgids, self.interval = pgids, interval
        self.ours: dict[str, int] = {}
        self.sockets: set[Path] = set()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.t0, self.busy0 = time.monotonic(), _busy_ticks()
        self.self0 = _proc_stat("self")[1]  # type: ignore[index]
        self.thread.start()

    def _sample(self) -> None:
        groups = self.pgids()
        inodes: set[str] = set()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                stat = _proc_stat(pid)
                if stat is not None and stat[0] in groups:
                    self.ours[pid] = max(self.ours.get(pid, 0), stat[1])
                    inodes |= _socket_inodes(pid)
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()  # Num RefCount Protocol Flags Type St Inode [Path]
            if len(fields) >= 8 and fields[6] in inodes and Path(fields[7]).match(SOCKET_GLOB):
                self.sockets.add(Path(fields[7]))

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        """Share of the machine (0..1) that other jobs used since the watcher started."""
        self.stop_event.set()
        self.thread.join()
        self._sample()
        ours = sum(self.ours.values()) + _proc_stat("self")[1] - self.self0  # type: ignore[index]
        foreign = max(0, _busy_ticks() - self.busy0 - ours) / os.sysconf("SC_CLK_TCK")
        return foreign / ((time.monotonic() - self.t0) * (os.cpu_count() or 1))


def _socket_inodes(pid: str) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass  # gone meanwhile
    return out


def write_results(out: Path, results: dict, table: str, log: Callable[[str], None]) -> int:
    """Write ``out``.json (the results) and ``out``.md (``table``), print the table; the exit code of a benchmark:
    1 when a variant failed (``results["variants"][…]["error"]``) or processes were left behind, else 0."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print()
    print(table)
    log(f"wrote {out}.json and {out}.md in {results['total_seconds']:.0f} s")
    failed = [k for k, v in results["variants"].items() if "error" in v]
    return 1 if failed or results["cleanup"]["leftover_processes"] else 0
