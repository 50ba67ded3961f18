"""`koinon export`, `verify-card`, `generate` and `checkpoints` on a swarm whose ledger records a checkpoint and
whose members released it by vote (issue 6). The ledger's cuts are made in-process as in test_gov_cli.py."""

from __future__ import annotations

import json
import re

import pytest
import torch

from koinon.config import TrainingConfig
from koinon.store.checkpoint import save_checkpoint
from koinon.store.fetch import content_of, make_manifest, manifest_id
from koinon.store.provenance import render_card
from koinon.training.model import build_model, flat_parameters, load_flat_parameters, theta_hash
from tests.e2e.test_gov_cli import CHARTER, PROPOSAL_ID, Swarm, one_error_line

CONFIG = TrainingConfig(inner_steps=50)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A member folder: a swarm, a checkpoint (θ₀ moved by noise) recorded on the ledger, a release v1 of it that
    passed, and a ledger export."""
    from koinon.cli.main import main

    root = tmp_path_factory.mktemp("export")
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


def test_export_loads_in_transformers_with_identical_logits(released, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = released["root"] / "hf"
    code, out, err = cli("export", "--checkpoint", "release:v1", "--format", "hf", target, "--home", released["home"])
    assert code == 0, err
    assert "Apache-2.0" in out
    model = AutoModelForCausalLM.from_pretrained(str(target), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    assert tokenizer("hi", add_special_tokens=False).input_ids == [ord("h") + 3, ord("i") + 3]
    x = torch.randint(3, 259, (2, 40))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, released["model"](x).logits)
    card = (target / "README.md").read_text()
    assert "license: Apache-2.0" in card and f"`{released['theta']}`" in card
    prov = json.loads((target / "provenance.json").read_text())
    assert prov["release"]["tag"] == "v1" and prov["checkpoint"]["round"] == 7


def test_verify_card_passes_and_a_hand_edit_fails(released, cli):
    target = released["root"] / "hf-card"
    assert cli("export", "--checkpoint", released["theta"][:10], target, "--home", released["home"])[0] == 0
    code, out, err = cli("verify-card", target, "--ledger", released["ledger"])
    assert code == 0, err
    assert "inclusion proofs verify" in out and "model card: OK" in out
    # a hand edit of the README
    readme = target / "README.md"
    good = readme.read_text()
    assert "after round 7\n" in good
    readme.write_text(good.replace("after round 7\n", "after round 70\n"))
    code, _, err = cli("verify-card", target, "--ledger", released["ledger"])
    assert code == 1 and "changed by hand" in err
    readme.write_text(good)
    # a forged claim, re-rendered so that the README matches it: the ledger disagrees
    prov_path = target / "provenance.json"
    prov = json.loads(prov_path.read_text())
    prov["training"]["tokens"] += 1000
    prov_path.write_text(json.dumps(prov))
    readme.write_text(render_card(prov))
    code, _, err = cli("verify-card", target, "--ledger", released["ledger"])
    assert code == 1 and "'training'" in err
    # weights swapped for other weights
    prov["training"]["tokens"] -= 1000
    prov_path.write_text(json.dumps(prov))
    readme.write_text(render_card(prov))
    assert cli("verify-card", target, "--ledger", released["ledger"])[0] == 0
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(target / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = cli("verify-card", target, "--ledger", released["ledger"])
    assert code == 1 and "weights" in err


def test_bad_exports_are_clear_errors_and_leave_nothing(released, cli, tmp_path):
    home = released["home"]
    code, _, err = cli("export", "--checkpoint", "deadbeef00", tmp_path / "a", "--home", home)
    one_error_line(code, err, "no checkpoint")
    code, _, err = cli("export", "--checkpoint", "release:v9", tmp_path / "a", "--home", home)
    one_error_line(code, err, "no release 'v9'")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    code, _, err = cli("export", tmp_path / "full", "--home", home)
    one_error_line(code, err, "not empty")
    (tmp_path / "file").write_text("not a folder")
    code, _, err = cli("export", "--checkpoint", released["theta"][:10], tmp_path / "file" / "sub", "--home", home)
    one_error_line(code, err, "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]  # no half-written directory
    # a truncated checkpoint file
    ckpts = home / "checkpoints"
    src = ckpts / f"{released['theta'][:16]}.safetensors"
    bad = ckpts / "0badc0de00000000.safetensors"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    try:
        code, _, err = cli("export", "--checkpoint", "0badc0de", tmp_path / "b", "--home", home)
        one_error_line(code, err, "truncated")
    finally:
        bad.unlink()
    assert not (tmp_path / "b").exists()


def test_generate_greedy_matches_transformers_and_checkpoints_lists_the_release(released, cli):
    code, out, err = cli(
        "generate",
        "def f(x):",
        "--checkpoint",
        "release:v1",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--home",
        released["home"],
    )
    assert code == 0, err
    ids = torch.tensor([[b + 3 for b in b"def f(x):"]])
    with torch.no_grad():
        want = released["model"].generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    text = bytes(i - 3 for i in want[0, ids.shape[1] :].tolist() if 3 <= i < 259).decode(errors="replace")
    assert out == "def f(x):" + text + "\n"
    code, out, _ = cli("checkpoints", "--home", released["home"])
    assert code == 0 and re.search(r"release v1: [0-9a-f]{16} \(Apache-2.0\), held here", out)
    code, _, err = cli("generate", "x" * 200, "--home", released["home"], "--checkpoint", released["theta"][:10])
    one_error_line(code, err, "at most")
