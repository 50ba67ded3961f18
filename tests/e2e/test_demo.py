"""`koinon demo` as a user runs it: a short local swarm that ends with a truthful summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.swarmkit import p2pd_pids

pytestmark = pytest.mark.slow


def test_demo_trains_and_summarises(tmp_path):
    summary_path = tmp_path / "summary.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "koinon",
            "demo",
            "--peers",
            "3",
            "--minutes",
            "1",
            "--inner-steps",
            "10",
            "--workdir",
            str(tmp_path / "run"),
            "--summary-json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    for key in ("eval_loss_start", "eval_loss_end", "rounds", "tokens", "bytes_sent", "peers", "theta_hash"):
        assert key in s, f"summary lacks {key}"
    assert s["peers"] == 3 and s["peers_joined"] == 3 and s["peers_left"] == 3
    assert s["rounds"] >= 2
    assert s["eval_loss_end"] < s["eval_loss_start"] - 0.5
    assert set(s["theta_hash"]) == {"peer-0", "peer-1", "peer-2"}
    assert len(set(s["theta_hash"].values())) == 1 and s["theta_identical"]
    assert s["tokens"] > 0 and s["bytes_sent"] > 0
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run" / "peer-0" / "checkpoints").exists()
    assert s["checkpoint"] and s["checkpoint"].endswith(".safetensors")
    assert "identical on all 3 peers" in out.stdout
    assert not p2pd_pids(under=tmp_path), "the demo left p2pd processes behind"
    # the demo governs itself: peer-1 proposed H 10 → 5, the vote passed 2 to 1, every peer switched at one round
    (decision,) = s["decisions"]
    assert decision["action"] == "set-config" and decision["effect"] == {"inner_steps": 5}
    assert decision["state"] == "executed", decision
    t = decision["tally"]
    assert (t["yes"], t["no"], t["abstain"], t["total"]) == (2, 1, 0, 3)
    rounds = decision["effective_round"]
    assert set(rounds) == {"peer-0", "peer-1", "peer-2"} and len(set(rounds.values())) == 1, rounds
    assert next(iter(rounds.values())) is not None
    assert "on every peer" in out.stdout
    # every peer's work was spot-checked by the others, passed, and earned credit; nobody was accused
    v = s["verification"]
    assert {row["peer"] for row in v["members"]} == {"peer-0", "peer-1", "peer-2"}, v
    for row in v["members"]:
        assert row["verified"] >= 1 and row["credit"] > 0, row
        assert row["failed"] == 0 and row["false_accusations"] == 0 and row["excluded_until"] is None, row
    assert "Verification" in out.stdout
    # peer-0 served the dashboard while the demo ran, and the demo said where (with the write token)
    token = (tmp_path / "run" / "peer-0" / "dashboard.token").read_text().strip()
    assert "dashboard: http://127.0.0.1:" in out.stdout and f"?token={token}" in out.stdout
