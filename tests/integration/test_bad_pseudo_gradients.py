"""A peer that sends NaN pseudo-gradients is left out of the average and named in the honest peers' logs;
θ on the honest peers stays finite and identical."""

from __future__ import annotations

import math

import pytest

from tests.integration.swarmkit import FAST, PeerProcess, stop_all

pytestmark = pytest.mark.slow


def test_nan_pseudo_gradients_are_rejected_with_the_senders_id(tmp_path):
    args = ["--wait-for-peers", "3", "--rounds", "3", *FAST]
    honest = [PeerProcess(tmp_path / "honest-0", extra=args)]
    peers = list(honest)
    try:
        boot = honest[0].maddrs()
        honest.append(PeerProcess(tmp_path / "honest-1", boot, extra=args))
        mallory = PeerProcess(tmp_path / "mallory", boot, extra=[*args, "--attack", "nan"])
        peers += [honest[1], mallory]
        for p in honest:
            assert p.proc.wait(240) == 0, p.log_tail()
        a, b = (p.rounds() for p in honest)
        mallory_id = mallory.metrics("start")[0]["member"]
        for r in (1, 2, 3):
            assert a[r]["theta"] == b[r]["theta"], f"round {r}: honest peers diverged"
            assert math.isfinite(a[r]["eval_loss"]), f"round {r}: θ is not finite"
        assert a[3]["eval_loss"] < honest[0].metrics("start")[0]["eval_loss"] - 0.5
        assert max(a[3]["rejected"], b[3]["rejected"]) > 0, "no part was rejected"
        logs = honest[0].log_tail(10**6) + honest[1].log_tail(10**6)
        assert f"rejected pseudo-gradient part from peer {mallory_id}" in logs
    finally:
        stop_all(peers)
