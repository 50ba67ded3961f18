"""A peer applies a governance state: configuration, data sources, its own expulsion (no network needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from koinon.config import TrainingConfig
from koinon.governance.charter import training_body
from koinon.governance.state import GovState
from koinon.ledger.event import Event
from koinon.swarm.peer import Peer, PeerOptions
from koinon.training.data import source_hash
from tests.sim.fakenet import identity_from_seed


def _source(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text(text * 4000)
    return folder


@pytest.fixture
def peer(tmp_path):
    a = _source(tmp_path / "data-a", "alpha beta gamma\n")
    b = _source(tmp_path / "data-b", "delta epsilon zeta\n")
    p = Peer(PeerOptions(home=tmp_path / "home", data=[a, b], config=TrainingConfig(inner_steps=5)))
    yield p
    p.ledger.store.close()
    p.home_lock.release()


def charter_state(config: TrainingConfig) -> GovState:
    founder = identity_from_seed("founder")
    charter = Event.create(
        founder,
        swarm=b"",
        seq=1,
        prev=None,
        kind="charter",
        body={"name": "t", "founders": [founder.member_id], "training": training_body(config), "rules": {}},
        time_ms=0,
    )
    return GovState(charter)


def test_a_new_configuration_reaches_the_inner_and_outer_optimizers(peer):
    gov = charter_state(TrainingConfig(inner_steps=5))
    gov.config = dataclasses.replace(gov.config, inner_steps=9, outer_lr=0.5, inner_weight_decay=0.2)
    peer._use_governance(3, gov)
    trainer = peer.trainer
    assert trainer.config.inner_steps == 9 and trainer.gov_index == 3
    assert float(trainer.outer.lr) == 0.5
    assert trainer.inner.config.inner_steps == 9
    assert all(g["weight_decay"] == 0.2 for g in trainer.inner.optimizer.param_groups)
    assert gov.config.config_hash() in peer.verification.known_configs  # its commitments can be re-executed
    assert peer._gather(8)["config"] == gov.config.config_hash()
    assert peer._gather(8)["gov"] == 4  # the governance state after final cut 3: part of the group's key


def test_a_removed_data_source_is_no_longer_sampled(peer, tmp_path):
    trainer = peer.trainer
    a, b = trainer.data_paths
    assert trainer.corpus.source_ids == [source_hash(a), source_hash(b)]
    gov = charter_state(trainer.config)
    gov.removed_data.add(source_hash(a))
    peer._use_governance(0, gov)
    assert trainer.data_paths == [b]
    assert trainer.corpus.source_ids == [source_hash(b)]
    assert b"alpha" not in trainer.corpus.stream.tobytes()
    gov = gov.copy()
    gov.removed_data.add(source_hash(b))
    peer._use_governance(1, gov)
    assert trainer.data_paths == []  # nothing allowed: the peer contributes nothing (LocalTrainer.train checks)


def test_an_expelled_member_says_so_in_its_gather(peer):
    gov = charter_state(peer.trainer.config)
    gov.expelled.add(peer.member)
    peer._use_governance(0, gov)
    assert peer.member in peer._gather(0)["excluded"]
