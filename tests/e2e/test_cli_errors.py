"""The `koinon` command as a user types it: help, `koinon id`, and bad input that must end in one clear line.

Every command runs in a fresh interpreter (``python -m koinon``) with ``KOINON_HOME`` inside the test's
tmp_path, and must not leave a ``p2pd`` daemon behind.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from koinon.identity import Identity

MEMBER_ID = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
# flags that keep a start command short and local if it ever got past the error it should stop at
SAFE_START = ["--listen", "/ip4/127.0.0.1/tcp/0", "--rounds", "1", "--inner-steps", "1", "--threads", "1"]


def _p2pd_pids() -> set[int]:
    try:
        out = subprocess.run(["pgrep", "-f", "p2pd"], capture_output=True, text=True, timeout=10).stdout
    except FileNotFoundError:
        pytest.skip("pgrep is not installed")
    return {int(pid) for pid in out.split()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""  # already gone


@pytest.fixture(autouse=True)
def no_p2pd_left_behind(tmp_path: Path):
    """Compare p2pd PIDs before and after; a new one is ours when its command line names our tmp_path (its
    -id= key file lives there), so peers started concurrently by other tests are not blamed."""
    before = _p2pd_pids()
    yield
    deadline = time.monotonic() + 10.0  # a daemon being torn down may need a moment after its parent exits
    while True:
        ours = {pid for pid in _p2pd_pids() - before if str(tmp_path) in _cmdline(pid)}
        if not ours or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in ours:  # clean up what this test started, then fail
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not ours, f"p2pd left running: {[_cmdline(p) for p in ours]}"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def koinon(*args: str, home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, KOINON_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "koinon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
    )


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, stderr is exactly one line starting with 'koinon: error:', no traceback."""
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("koinon: error:"), lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# --- help ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["start"], ["demo"], ["id"]], ids=["koinon", "start", "demo", "id"])
def test_help_exits_zero_and_shows_an_example(command: list[str], home: Path):
    result = koinon(*command, "--help", home=home, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: koinon")
    assert "example" in result.stdout.lower(), f"`{' '.join(['koinon', *command, '--help'])}` shows no example"
    assert "koinon " + " ".join(command) in result.stdout


# --- koinon id -----------------------------------------------------------------------------------------------------


def test_id_creates_a_private_key_and_prints_the_same_member_twice(tmp_path: Path, home: Path):
    member_home = tmp_path / "member"
    first = koinon("id", "--home", str(member_home), home=home, timeout=60)
    assert first.returncode == 0, first.stderr
    key = member_home / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_size == 68
    ids = MEMBER_ID.findall(first.stdout)
    assert ids, first.stdout
    assert ids[0] == Identity.load(member_home).member_id

    second = koinon("id", "--home", str(member_home), home=home, timeout=60)
    assert second.returncode == 0, second.stderr
    assert MEMBER_ID.findall(second.stdout)[0] == ids[0]
    assert not home.exists(), "--home must win over KOINON_HOME"


def test_id_uses_koinon_home(home: Path):
    result = koinon("id", home=home, timeout=60)
    assert result.returncode == 0, result.stderr
    assert MEMBER_ID.findall(result.stdout)[0] == Identity.load(home).member_id


def _corrupt_identity(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "identity.key").write_bytes(b"\x08\x01\x12\x40" + b"\x00" * 20)


def test_id_with_a_corrupted_identity_file(home: Path):
    _corrupt_identity(home)
    line = assert_clean_error(koinon("id", home=home, timeout=60), "corrupted", "koinon id")
    assert str(home / "identity.key") in line
    assert (home / "identity.key").stat().st_size == 24, "the damaged key must not be overwritten"


def test_start_with_a_corrupted_identity_file(home: Path, small_corpus_dir: Path):
    _corrupt_identity(home)
    assert_clean_error(koinon("start", "--data", str(small_corpus_dir), *SAFE_START, home=home), "corrupted")


# --- koinon start: bad data ----------------------------------------------------------------------------------------


def test_start_with_a_nonexistent_data_path(home: Path):
    assert_clean_error(
        koinon("start", "--data", "/nonexistent", *SAFE_START, home=home), "/nonexistent", "does not exist"
    )


def test_start_with_an_empty_data_file(home: Path, tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_clean_error(koinon("start", "--data", str(empty), *SAFE_START, home=home), str(empty))


def test_start_with_too_little_data(home: Path, tmp_path: Path):
    small = tmp_path / "small.txt"
    small.write_text("hello world\n" * 100)
    assert_clean_error(koinon("start", "--data", str(small), *SAFE_START, home=home), "bytes")


def test_start_with_a_sequence_longer_than_a_data_block(home: Path, small_corpus_dir: Path):
    assert_clean_error(
        koinon("start", "--data", str(small_corpus_dir), "--seq-len", "5000", *SAFE_START, home=home), "seq_len"
    )


def test_start_with_a_bad_hyperparameter(home: Path, small_corpus_dir: Path):
    assert_clean_error(
        koinon("start", "--data", str(small_corpus_dir), "--outer-lr", "5", *SAFE_START, home=home), "outer_lr"
    )


# --- koinon start: bad network arguments ---------------------------------------------------------------------------


def test_start_with_initial_peers_nobody_answers(home: Path, small_corpus_dir: Path, tmp_path: Path):
    nobody = Identity.create(tmp_path / "nobody").member_id  # a valid peer id that is not running anywhere
    maddr = f"/ip4/127.0.0.1/tcp/9/p2p/{nobody}"  # port 9 (discard): nothing listens there
    started = time.monotonic()
    result = koinon("start", "--data", str(small_corpus_dir), "--initial-peers", maddr, *SAFE_START, home=home)
    elapsed = time.monotonic() - started
    assert_clean_error(result, "initial peers", maddr)
    assert elapsed < 60, f"took {elapsed:.0f} s to give up"


def test_start_on_a_port_already_in_use(home: Path, small_corpus_dir: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        result = koinon("start", "--data", str(small_corpus_dir), *SAFE_START, "--listen", listen, home=home)
    assert_clean_error(result, "already in use", str(port))


@pytest.mark.parametrize("option", ["--initial-peers", "--listen", "--announce"])
def test_start_with_something_that_is_not_a_multiaddr(option: str, home: Path, small_corpus_dir: Path):
    result = koinon("start", "--data", str(small_corpus_dir), *SAFE_START, option, "not-a-multiaddr", home=home)
    assert_clean_error(result, option, "not-a-multiaddr", "multiaddr")
