"""The model commands: ``koinon checkpoints``, ``export``, ``verify-card`` and ``generate`` (docs/models.md).

All of them work offline, from the member folder's checkpoints and ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from koinon.cli.common import add_command, home_option, run_standalone
from koinon.errors import ConfigError, KoinonError, StateError

EPILOG = {
    "checkpoints": "example:\n  koinon checkpoints",
    "export": (
        "examples:\n"
        "  koinon export --checkpoint latest --format hf my-model\n"
        "  koinon export --checkpoint release:v1 --format hf my-model   # a release the swarm voted\n"
        "  python -c \"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('my-model')\""
    ),
    "verify-card": (
        "example:\n  koinon ledger export swarm.ledger && koinon verify-card my-model --ledger swarm.ledger"
    ),
    "generate": (
        "examples:\n"
        "  koinon generate 'def fibonacci(n):'\n"
        "  koinon generate 'import os' --checkpoint release:v1 --temperature 0.8 --top-p 0.95 --max-tokens 200"
    ),
}


def _quiet_transformers() -> None:
    """No download/loading progress bars on stderr: our commands print what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _add(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return add_command(sub, name, help_text, EPILOG.get(name))


def _checkpoint_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--checkpoint",
        default="latest",
        metavar="ID",
        help="latest (default), release:TAG, or a checkpoint's θ hash (8+ hex digits)",
    )


def register(sub) -> None:
    sp = _add(sub, "checkpoints", "List this member's checkpoints (newest first) and the swarm's releases.")
    home_option(sp)
    sp = _add(sub, "export", "Write a checkpoint as a Hugging Face model directory with a provable model card.")
    _checkpoint_option(sp)
    sp.add_argument("--format", choices=["hf"], default="hf", help="hf: transformers' from_pretrained layout")
    sp.add_argument("dir", type=Path, metavar="DIR", help="the directory to create (must not exist yet)")
    home_option(sp)
    sp = _add(sub, "verify-card", "Check every claim of an exported model card against a ledger export.")
    sp.add_argument("dir", type=Path, metavar="DIR", help="a directory written by `koinon export`")
    sp.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="EXPORT",
        help="a `koinon ledger export` file (default: the member folder's ledger)",
    )
    home_option(sp)
    sp = _add(sub, "generate", "Sample text from a checkpoint on this machine.")
    sp.add_argument("prompt", metavar="PROMPT")
    _checkpoint_option(sp)
    sp.add_argument("--temperature", type=float, default=0.8, help="0: greedy (default 0.8)")
    sp.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    sp.add_argument("--max-tokens", type=int, default=200, help="bytes to generate (default 200)")
    sp.add_argument("--seed", type=int, default=None, help="sampling seed (reproducible output)")
    home_option(sp)


def main_commands() -> dict[str, Callable[[argparse.Namespace], int]]:
    return {
        "checkpoints": cmd_checkpoints,
        "export": cmd_export,
        "verify-card": cmd_verify_card,
        "generate": cmd_generate,
    }


def run(argv: list[str] | None = None) -> int:
    return run_standalone(register, main_commands, argv)


# --- resolving a checkpoint ---------------------------------------------------------------------------------------
def resolve(home: Path, ref: str) -> tuple[Path, str | None]:
    """(checkpoint file, release tag or None) for ``latest``, ``release:TAG`` or a θ hash prefix."""
    from koinon.store.checkpoint import resolve_checkpoint

    folder = Path(home) / "checkpoints"
    if ref.startswith("release:"):
        tag = ref.split(":", 1)[1]
        from koinon.cli.gov_cmds import open_view

        with open_view(home) as view:
            release = view.state.releases.get(tag)
            known = sorted(view.state.releases)
        if release is None:
            raise StateError(
                f"no release {tag!r} has passed this swarm's governance"
                + (f" (releases: {', '.join(known)})" if known else " (none yet)")
            )
        path = folder / f"{release['checkpoint'][:16]}.safetensors"
        if not path.exists():
            raise StateError(
                f"release {tag!r} is checkpoint {release['checkpoint'][:16]}, which this member does not hold yet; "
                "a running peer fetches released checkpoints from the members that recorded them"
            )
        return path, tag
    return resolve_checkpoint(folder, ref), None


def load_model(path: Path):
    """(model, metadata) of a checkpoint file, its hash checked."""
    from koinon.config import TrainingConfig
    from koinon.store.checkpoint import read_checkpoint
    from koinon.training.model import build_model, load_flat_parameters

    flat, meta = read_checkpoint(path)
    model = build_model(TrainingConfig(**meta["config"]))
    load_flat_parameters(model, flat)
    model.eval()
    return model, meta


# --- commands -----------------------------------------------------------------------------------------------------
def cmd_checkpoints(args: argparse.Namespace) -> int:
    folder = Path(args.home) / "checkpoints"
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    latest = (folder / "LATEST").read_text().strip() if (folder / "LATEST").exists() else None
    if not files:
        print(f"no checkpoints in {folder} yet")
    for p in files:
        mark = "  (latest)" if p.name == latest else ""
        print(f"{p.name[:16]}  {p.stat().st_size / 1e6:7.1f} MB{mark}")
    try:
        from koinon.cli.gov_cmds import open_view

        with open_view(args.home) as view:
            for tag, r in sorted(view.state.releases.items()):
                held = "held here" if (folder / f"{r['checkpoint'][:16]}.safetensors").exists() else "not held here"
                print(f"release {tag}: {r['checkpoint'][:16]} ({r['license']}), {held}")
    except KoinonError:
        pass
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from transformers import ByT5Tokenizer

    _quiet_transformers()
    from koinon.cli.gov_cmds import open_view
    from koinon.store.provenance import build_provenance, render_card

    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} already exists and is not empty; choose a new directory")
    path, tag = resolve(args.home, args.checkpoint)
    model, meta = load_model(path)
    theta = bytes.fromhex(meta["theta_hash"])
    with open_view(args.home) as view:
        prov = build_provenance(view.store, theta, tag)
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as e:
        raise ConfigError(f"cannot write into {parent}: {e.strerror or e}") from None
    try:
        model.save_pretrained(str(tmp))
        ByT5Tokenizer().save_pretrained(str(tmp))
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(render_card(prov))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write {target}: {e.strerror or e}; nothing was left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported checkpoint {meta['theta_hash'][:16]} (round {meta['round']}) to {target}")
    print(f"model card: {target / 'README.md'} — {prov['license']}")
    print(f"check it:   koinon ledger export L.ledger && koinon verify-card {target} --ledger L.ledger")
    return 0


def _ledger_store(args: argparse.Namespace):
    from koinon.ledger.store import LedgerStore

    if args.ledger is None:
        path = Path(args.home) / "ledger.sqlite"
        if not path.is_file():
            raise StateError(f"no ledger at {path}; pass --ledger EXPORT (from `koinon ledger export`)")
        return LedgerStore(path)
    from koinon.ledger.audit import audit
    from koinon.ledger.export import load_export

    swarm, wires, quarantine = load_export(args.ledger)
    audit(wires, expected_swarm=swarm, quarantine=quarantine)  # AuditFailure names the first bad event
    from koinon.ledger.event import Event

    store = LedgerStore(":memory:")
    for w in quarantine:
        store.quarantine(Event.from_wire(w))
    for w in wires:
        store.append_wire(w)
    return store


def cmd_verify_card(args: argparse.Namespace) -> int:
    from koinon.store.provenance import CardError, verify_card

    _quiet_transformers()
    store = _ledger_store(args)
    try:
        checked = verify_card(args.dir, store)
    except CardError as e:
        print(f"koinon: error: card check failed: {e}", file=sys.stderr)
        return 1
    except KoinonError as e:  # an inclusion proof that does not verify
        print(f"koinon: error: card check failed: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for line in checked:
        print(f"ok  {line}")
    print("model card: OK")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from koinon.training.model import decode_ids, encode_text

    if args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ConfigError("--temperature must be ≥ 0 and --top-p in (0, 1]")
    if not args.prompt:
        raise ConfigError("the prompt is empty")
    path, _ = resolve(args.home, args.checkpoint)
    model, _meta = load_model(path)
    ids = encode_text(args.prompt)
    limit = model.config.n_positions
    if len(ids) >= limit:
        raise ConfigError(f"the prompt is {len(ids)} bytes; this model reads at most {limit - 1}")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    new = min(args.max_tokens, limit - len(ids))
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new,
            do_sample=args.temperature > 0,
            temperature=args.temperature if args.temperature > 0 else None,
            top_p=args.top_p if args.temperature > 0 else None,
            pad_token_id=model.config.pad_token_id,
        )
    sys.stdout.write(args.prompt + decode_ids(out[0, len(ids) :].tolist()) + "\n")
    return 0
