"""A member folder whose ledger records a checkpoint that its members released by vote (v1): the starting point
of the model tests (test_export.py, test_serve.py). The ledger's cuts are made in-process as in test_gov_cli.py."""

from __future__ import annotations

import torch

from koinon.config import TrainingConfig
from koinon.store.checkpoint import save_checkpoint
from koinon.store.fetch import content_of, make_manifest, manifest_id
from koinon.training.model import build_model, flat_parameters, load_flat_parameters, theta_hash
from tests.e2e.test_gov_cli import CHARTER, PROPOSAL_ID, Swarm

CONFIG = TrainingConfig(inner_steps=50)


def make_released(root):
    """A member folder: a swarm, a checkpoint (θ₀ moved by noise) recorded on the ledger, a release v1 of it that
    passed, and a ledger export."""
    from koinon.cli.main import main

    home = root / "member"
    (root / "charter.toml").write_text(CHARTER)
    assert main(["init", "exp", "--charter", str(root / "charter.toml"), "--home", str(home)]) == 0
    swarm = Swarm(home)
    swarm.step(2)
    model = build_model(CONFIG)
    torch.manual_seed(7)
    theta = flat_parameters(model) + 0.01 * torch.randn(flat_parameters(model).shape)
    save_checkpoint(home / "checkpoints", model, theta, 7, CONFIG)
    content = content_of(theta)
    manifest = make_manifest(content, 7, CONFIG)
    swarm.append_mine(
        "checkpoint",
        {
            "theta": manifest["theta"],
            "round": 7,
            "parent": None,
            "config": bytes.fromhex(CONFIG.config_hash()),
            "gov": None,
            "contributors": [],
            "data": [],
            "samples": 0,
            "manifest": manifest_id(manifest),
            "size": len(content),
        },
    )
    swarm.step(2)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "propose",
                "release",
                "--checkpoint",
                theta_hash(theta),
                "--tag",
                "v1",
                "--license",
                "Apache-2.0",
                "--text",
                "First release",
                "--home",
                str(home),
            ]
        )
    assert code == 0, out.getvalue()
    pid = PROPOSAL_ID.search(out.getvalue()).group(1)
    swarm.step(2)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["vote", pid[:12], "yes", "--home", str(home)]) == 0
    swarm.step(8)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["ledger", "export", str(root / "swarm.ledger"), "--home", str(home)]) == 0
    load_flat_parameters(model, theta)
    model.eval()
    return {"root": root, "home": home, "model": model, "theta": theta_hash(theta), "ledger": root / "swarm.ledger"}
