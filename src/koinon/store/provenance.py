"""A model card provable from the ledger (docs/models.md).

:func:`build_provenance` computes, from a ledger and one of its final cuts, every claim a model card makes about a
checkpoint: its lineage, the release that approved it and its license, who contributed and their verified shares,
the data sources by hash, rounds and tokens, the governance decisions and resolutions in force. Claims that rest on
one event carry that event's RFC 9162 inclusion proof against the cut's root; claims that are derived (shares,
tokens) name the cut they were computed at, so anyone holding the ledger recomputes them. ``provenance.json``
holds the claims; ``README.md`` is rendered from it by :func:`render_card`, deterministically.

:func:`verify_card` checks an exported directory against a ledger export: the README is exactly the rendering of
``provenance.json`` (so a hand edit shows), the cut is one of the ledger's final cuts, every claim is what the
ledger says at that cut, every inclusion proof verifies, and the weights are the checkpoint the card names.
"""

from __future__ import annotations

import json
from pathlib import Path

from koinon.errors import KoinonError, StateError
from koinon.ledger.lineage import round_chain
from koinon.ledger.merkle import inclusion_proof, leaf_hash, verify_inclusion

FORMAT = "koinon-model-card/v1"
MAX_LINEAGE = 64


class CardError(KoinonError):
    """A model card that does not match the ledger (or its own files)."""


def _proof(order, index: int, event) -> dict:
    return {
        "event": event.id.hex(),
        "index": index,
        "path": [h.hex() for h in inclusion_proof(order.leaves, index)],
    }


def key_of(e) -> tuple:
    x = e.body
    return (x["round"], x["parent"], x["config"], x["manifest"], tuple(x["contributors"]), tuple(x["data"]))


def build_provenance(store, theta: bytes, tag: str | None = None, cut_index: int | None = None) -> dict:
    """Every claim about checkpoint ``theta`` at final cut ``cut_index`` (default: the last), from ``store``."""
    from koinon.ledger.export import total_order
    from koinon.verification.trust import credit_dict

    order = total_order(store)
    final = order.chain.final_cuts()
    if not final:
        raise StateError("the ledger has no final cut yet: nothing can be proven")
    if cut_index is None:
        cut_index = len(final) - 1
    if not 0 <= cut_index < len(final):
        raise CardError(f"the ledger has no final cut #{cut_index} (it has {len(final)})")
    cut = final[cut_index].event
    size = int(cut.body["size"])
    leaves = order.leaves[:size]
    events = order.final[:size]

    class Prefix:  # the log as it was at that cut
        pass

    prefix = Prefix()
    prefix.leaves = leaves
    position = {e.id: i for i, e in enumerate(events)}
    state = order.chain.final_governance(cut_index)
    charter = store.charter()

    ckpts = [e for e in events if e.kind == "checkpoint" and e.body["theta"] == theta]
    if not ckpts:
        raise CardError(
            f"checkpoint {theta.hex()[:16]} is not recorded in a final cut of this ledger (up to cut #{cut_index})"
        )
    # members may record different lineage claims for the same θ: the card states the one most of them recorded
    # (ties: the earliest in the log), never one member's word against the others'
    groups: dict[tuple, list] = {}
    for e in ckpts:
        groups.setdefault(key_of(e), []).append(e)
    first = max(groups.values(), key=lambda g: (len(g), -position[g[0].id]))[0]
    b = first.body
    by_theta: dict[bytes, object] = {}
    for e in events:
        if e.kind == "checkpoint":
            by_theta.setdefault(e.body["theta"], e)
    lineage, parent = [], b["parent"]
    while parent is not None and parent in by_theta and len(lineage) < MAX_LINEAGE:
        e = by_theta[parent]
        lineage.append({"theta": parent.hex(), "round": e.body["round"], "event": e.id.hex()})
        parent = e.body["parent"]

    release = None
    license_ = "unreleased: no release of this checkpoint passed the swarm's governance"
    for rtag, rel in sorted(state.releases.items()):
        if rel["checkpoint"] == theta.hex() and (tag is None or tag == rtag):
            proposal = next(
                (
                    p
                    for p in state.proposals.values()
                    if p.action == "release" and p.effect.get("tag") == rtag and p.state == "executed"
                ),
                None,
            )
            pe = next(e for e in events if e.id == proposal.id) if proposal is not None else None
            release = {
                "tag": rtag,
                "license": rel["license"],
                "proposal": _proof(prefix, position[pe.id], pe) if pe is not None else None,
            }
            license_ = rel["license"]
            break
    if tag is not None and release is None:
        raise CardError(f"no executed release {tag!r} names checkpoint {theta.hex()[:16]} at cut #{cut_index}")

    credit = credit_dict(state)
    data_names = dict(state.data)
    seq_len = json.loads(state.config.canonical_json()).get("seq_len") if state.config else None
    reported: dict[int, list[int]] = {}
    rounds = round_chain(events)  # only certified rounds count (docs/training.md §2)
    for e in events:
        if e.kind == "round" and e.body["height"] <= b["round"]:
            cert = rounds.certificate(int(e.body["height"]))
            if cert is not None and cert.theta == e.body["theta"] and e.author in cert.signers:
                reported.setdefault(e.body["height"], []).append(int(e.body["samples"]))
    # each round's samples as most of its signers saw them (the lower median): one member can't inflate them
    per_round = {r: sorted(v)[(len(v) - 1) // 2] for r, v in reported.items()}
    samples = sum(per_round.values())

    decisions = []
    for d in state.decisions:
        pid = bytes.fromhex(d["id"])
        e = next(x for x in events if x.id == pid)
        decisions.append(
            {"action": d["action"], "applied": d["applied"], "cut": d["cut"], **_proof(prefix, position[pid], e)}
        )
    resolutions = []
    for r in state.resolutions:
        pid = bytes.fromhex(r["id"])
        e = next(x for x in events if x.id == pid)
        resolutions.append({"text": r["text"], "cut": r["cut"], **_proof(prefix, position[pid], e)})

    return {
        "format": FORMAT,
        "swarm": {"id": (store.swarm_id or b"").hex(), "name": charter.body["name"] if charter else ""},
        "cut": {"index": cut_index, "id": cut.id.hex(), "root": cut.body["root"].hex(), "size": size},
        "checkpoint": {
            "theta": theta.hex(),
            "round": b["round"],
            "config": b["config"].hex(),
            "manifest": b["manifest"].hex(),
            "recorded_by": sorted({e.author for e in groups[key_of(first)]}),
            **_proof(prefix, position[first.id], first),
        },
        "lineage": lineage,
        "release": release,
        "license": license_,
        "contributors": [
            {"member": row["member"], "credit": row["credit"], "share_permille": row["share_permille"]}
            for row in credit["members"]
        ],
        "trained_by": b["contributors"],
        "data": [{"hash": d.hex(), "name": data_names.get(d.hex(), "")} for d in b["data"]],
        "training": {"rounds": len(per_round), "samples": samples, "tokens": samples * int(seq_len or 0)},
        "decisions": decisions,
        "resolutions": resolutions,
    }


def render_card(prov: dict) -> str:
    """README.md of an exported model: Hugging Face front matter, then every claim in words. Deterministic."""
    c, cut = prov["checkpoint"], prov["cut"]
    lic = prov["release"]["license"] if prov["release"] else "other"
    lines = [
        "---",
        f"license: {lic}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- koinon",
        "- decentralized-training",
        "---",
        "",
        f"# {prov['swarm']['name'] or 'Koinon model'} — checkpoint {c['theta'][:16]}",
        "",
        "Trained together by the members of a Koinon swarm. Every statement below is a claim about the swarm's",
        "ledger at one final cut; `provenance.json` holds each claim with its ledger proof, and",
        "`koinon verify-card DIR --ledger LEDGER_EXPORT` checks all of them.",
        "",
        "## Model",
        "",
        f"- swarm `{prov['swarm']['id']}`",
        f"- checkpoint (θ hash) `{c['theta']}`, after round {c['round']}",
        f"- configuration `{c['config']}`; manifest `{c['manifest']}`",
        f"- recorded by {len(c['recorded_by'])} member(s); event `{c['event']}` (log leaf {c['index']})",
        f"- ledger cut #{cut['index']} `{cut['id']}`: root `{cut['root']}`, {cut['size']} events",
    ]
    if prov["lineage"]:
        lines.append("- lineage: " + " ← ".join(f"`{x['theta'][:12]}` (round {x['round']})" for x in prov["lineage"]))
    lines += ["", "## Release and license", ""]
    if prov["release"]:
        r = prov["release"]
        how = f"proposal `{r['proposal']['event']}` (log leaf {r['proposal']['index']})" if r["proposal"] else "-"
        lines.append(f"- release **{r['tag']}**, license **{r['license']}**, approved by {how}")
    else:
        lines.append(f"- {prov['license']}")
    t = prov["training"]
    lines += [
        "",
        "## Training",
        "",
        f"- {t['rounds']} rounds, {t['samples']:,} samples, {t['tokens']:,} tokens (from the final round events)",
        f"- members whose pseudo-gradients counted since the previous checkpoint: {len(prov['trained_by'])}",
        "",
        "## Contributors and verified shares",
        "",
        "Credit counts only work that passed the swarm's spot-checks (verified samples).",
        "",
        "| member | verified samples | share |",
        "|---|---:|---:|",
    ]
    for row in prov["contributors"]:
        lines.append(f"| `{row['member']}` | {row['credit']:,} | {row['share_permille'] / 10:.1f} % |")
    if not prov["contributors"]:
        lines.append("| (no verified work yet) | 0 | - |")
    lines += ["", "## Data sources (by content hash)", ""]
    for d in prov["data"]:
        lines.append(f"- `{d['hash']}`" + (f" — {d['name']}" if d["name"] else ""))
    lines += ["", "## Governance decisions in force", ""]
    for d in prov["decisions"]:
        lines.append(f"- cut #{d['cut']}: {d['action']} — {d['applied']} (proposal `{d['event']}`, leaf {d['index']})")
    if not prov["decisions"]:
        lines.append("- none")
    lines += ["", "## Resolutions", ""]
    for r in prov["resolutions"]:
        lines.append(f"- (cut #{r['cut']}, proposal `{r['event']}`) {r['text']}")
    if not prov["resolutions"]:
        lines.append("- none")
    lines.append("")
    return "\n".join(lines)


def _event_proofs(prov: dict) -> list[dict]:
    out = [prov["checkpoint"]]
    if prov["release"] and prov["release"]["proposal"]:
        out.append(prov["release"]["proposal"])
    return out + prov["decisions"] + prov["resolutions"]


def verify_card(folder: Path, store) -> list[str]:
    """Check an exported model directory against a ledger ``store``; return what was checked, or raise
    CardError naming the first claim that fails."""
    folder = Path(folder)
    try:
        prov = json.loads((folder / "provenance.json").read_text())
        readme = (folder / "README.md").read_text()
    except (OSError, ValueError) as e:
        raise CardError(f"{folder} is not an exported Koinon model (provenance.json, README.md): {e}") from None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise CardError(f"provenance.json is not a {FORMAT} file")
    try:
        rendered = render_card(prov)
    except (KeyError, TypeError, ValueError) as e:
        raise CardError(f"provenance.json is malformed: {e!r}") from None
    if readme != rendered:
        bad = next(
            (i for i, (a, b) in enumerate(zip(readme.splitlines(), rendered.splitlines(), strict=False), 1) if a != b),
            min(len(readme.splitlines()), len(rendered.splitlines())) + 1,
        )
        raise CardError(f"README.md line {bad} is not what provenance.json says: the card was changed by hand")
    checked = ["README.md is exactly the rendering of provenance.json"]
    theta = bytes.fromhex(prov["checkpoint"]["theta"])
    tag = prov["release"]["tag"] if prov["release"] else None
    try:
        expected = build_provenance(store, theta, tag, int(prov["cut"]["index"]))
    except (StateError, CardError) as e:
        raise CardError(f"the ledger does not support the card: {e}") from None
    for key in expected:
        if prov.get(key) != expected[key]:
            raise CardError(f"claim {key!r} differs from what the ledger says at cut #{prov['cut']['index']}")
    if set(prov) != set(expected):
        raise CardError(f"provenance.json has unexpected claims: {sorted(set(prov) - set(expected))}")
    checked.append(f"{len(expected) - 1} claims recomputed from the ledger at final cut #{prov['cut']['index']}")
    root, size = bytes.fromhex(prov["cut"]["root"]), int(prov["cut"]["size"])
    proofs = _event_proofs(prov)
    for p in proofs:
        event = store.get(bytes.fromhex(p["event"]))
        if event is None:
            raise CardError(f"event {p['event'][:16]} is not in the ledger")
        verify_inclusion(leaf_hash(event.wire), p["index"], size, [bytes.fromhex(h) for h in p["path"]], root)
    checked.append(f"{len(proofs)} inclusion proofs verify against the cut's root")
    flat = _weights(folder)
    from koinon.training.model import theta_hash

    if theta_hash(flat) != prov["checkpoint"]["theta"]:
        raise CardError("the weights in this directory are not the checkpoint the card names")
    checked.append("the weights hash to the checkpoint the card names")
    return checked


def _weights(folder: Path):
    from transformers import AutoModelForCausalLM

    from koinon.training.model import flat_parameters

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise CardError(f"cannot load the model in {folder}: {e}") from None
    return flat_parameters(model)
