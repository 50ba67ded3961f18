"""`koinon export`, `verify-card`, `generate` and `checkpoints` on a swarm whose ledger records a checkpoint and
whose members released it by vote (issue 6; the folder is made by tests/e2e/released.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from koinon.store.provenance import render_card
from tests.e2e.released import make_released
from tests.e2e.test_gov_cli import one_error_line


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_released(tmp_path_factory.mktemp("export"))


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
