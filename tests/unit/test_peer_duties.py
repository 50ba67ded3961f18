"""The duties a peer hands off from its round loop: checkpoint lineage on the ledger (store/releases.py), the
metrics log (swarm/metrics.py) and blob fetching for verification (verification/duties.py). No network needed."""

from __future__ import annotations

import json
import logging

import pytest

from koinon.config import TrainingConfig
from koinon.governance.charter import charter_from_toml, default_charter_text, training_body
from koinon.swarm.metrics import MetricsLog
from koinon.swarm.peer import Peer, PeerOptions
from koinon.swarm.sync import Snapshot


@pytest.fixture
def peer(tmp_path):
    p = Peer(PeerOptions(home=tmp_path / "home", config=TrainingConfig(inner_steps=5)))
    charter = charter_from_toml(default_charter_text(), p.member)
    p.ledger.found("t", training=training_body(p.trainer.config), rules=charter["rules"], founders=charter["founders"])
    yield p
    p.ledger.store.close()
    p.home_lock.release()


def test_checkpoints_are_recorded_with_their_lineage(peer):
    peer.save_checkpoint()  # round 0: a file, no ledger event
    assert list(peer.ledger.store.iter_events(kind="checkpoint")) == []
    # checkpoints are of the last *certified* state (a certificate arriving makes the peer keep a snapshot)
    peer.sync.keep(Snapshot.of(1, peer.trainer.theta, peer.trainer.outer.buffer, [peer.member]))
    peer.checkpoint_keeper.note_round([peer.member], 7)
    peer.checkpoint_keeper.note_round([peer.member], 5)
    first = peer.save_checkpoint()
    peer.sync.keep(Snapshot.of(2, peer.trainer.theta + 1, peer.trainer.outer.buffer, [peer.member]))
    peer.save_checkpoint()
    events = [e.body for e in peer.ledger.store.iter_events(kind="checkpoint")]
    assert [(b["round"], b["contributors"], b["samples"]) for b in events] == [(1, [peer.member], 12), (2, [], 0)]
    assert events[0]["parent"] is None and events[1]["parent"] == events[0]["theta"]
    assert events[0]["config"] == bytes.fromhex(peer.trainer.config.config_hash()) and events[0]["gov"] is None
    assert events[0]["data"] == [bytes.fromhex(d) for d in peer.trainer.corpus.source_ids]
    assert first.exists()
    rows = [json.loads(line) for line in peer.metrics.path.read_text().splitlines()]
    assert [(r["event"], r["round"]) for r in rows] == [("checkpoint", 0), ("checkpoint", 1), ("checkpoint", 2)]
    assert rows[1]["path"] == str(first)


def test_the_metrics_log_keeps_the_last_round_and_summarises_it(tmp_path, caplog):
    log = MetricsLog(tmp_path / "metrics.jsonl", logging.getLogger("koinon.peer"))
    record = dict(round=3, loss=1.0, eval_loss=2.0, peers=2, bytes_sent=2e6, theta="ab" * 32, in_sync=False)
    with caplog.at_level(logging.INFO, logger="koinon.peer"):
        log.write(event="round", resynced=True, **record)
        log.write(event="verdict", round=3, time=5.0)
    assert log.last_round["round"] == 3 and log.last_round["resynced"] is True and "time" in log.last_round
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert rows[0] == log.last_round and rows[1] == {"event": "verdict", "round": 3, "time": 5.0}
    assert [r.getMessage() for r in caplog.records] == [
        "round 3  loss 1.000  eval 2.000  peers 2  sent 2.0 MB  θ abababababab  (re-synced)"
    ]


def test_verification_fetches_blobs_locally_first_and_never_from_itself(peer):
    duties = peer.verification
    key = duties.blobs.pin(b"evidence")
    assert duties._fetch(key, [peer.member]) == b"evidence"
    asked = []
    duties.call_blob = lambda p, req: asked.append(p) or (_ for _ in ()).throw(ConnectionError(p))
    with pytest.raises(LookupError, match="no source served blob"):
        duties._fetch(b"\x01" * 32, [peer.member, "other"])
    assert asked == ["other"]
    assert peer.trainer.config.config_hash() in duties.known_configs
