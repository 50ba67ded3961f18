"""The swarm dashboard: five server-rendered pages, live updates over server-sent events, and write actions
(propose, vote, delegate, export) behind a local token (docs/dashboard.md).

Pages are plain HTML rendered here from the same data the CLI prints (``koinon proposals --json`` …, run in
process through :mod:`koinon.dashboard.bridge`), plus ``metrics.jsonl`` and, inside a running peer, its live DHT
view. A small script keeps them live: on each ``update`` event from ``/events`` it fetches the page again and swaps
the sections marked ``data-live`` (forms are outside them, so typing is never interrupted).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from koinon.dashboard.bridge import CommandError, run_cli, run_json

logger = logging.getLogger("koinon.dashboard")

TOKEN_FILE = "dashboard.token"
FAVICON = (
    "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><circle cx='8' cy='8' r='7' fill='#1f6feb'/>"
    "<circle cx='8' cy='8' r='3' fill='#fff'/></svg>"
)
PAGES = [("swarm", "Swarm"), ("training", "Training"), ("ledger", "Ledger"), ("governance", "Governance"),
         ("models", "Models")]  # fmt: skip


def load_or_create_token(home: Path) -> str:
    """The dashboard's write token: ``$HOME/dashboard.token``, mode 0600, created once."""
    path = Path(home) / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            os.chmod(path, 0o600)
            return token
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def short(member: str | None) -> str:
    return "—" if not member else f"…{member[-8:]}"


# --- data -----------------------------------------------------------------------------------------------------------
def metrics(home: Path) -> list[dict]:
    """This peer's round records (the last record of each round: a re-sync rewrites one)."""
    from koinon.cli.demo import read_metrics

    rounds = {
        r["round"]: r for r in read_metrics(Path(home)) if r.get("event") == "round" and isinstance(r.get("round"), int)
    }
    return [rounds[k] for k in sorted(rounds)]


def version(home: Path) -> tuple:
    """What changes when there is something new to show: the metrics and the ledger files."""
    stamp = []
    for name in ("metrics.jsonl", "ledger.sqlite-wal", "ledger.sqlite"):
        try:
            st = (Path(home) / name).stat()
            stamp.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


def safe(fn, *args):
    try:
        return fn(*args), None
    except CommandError as err:
        return None, str(err)


# --- rendering helpers ----------------------------------------------------------------------------------------------
def table(caption: str, headers: list[str], rows: list[list[str]], empty: str = "nothing yet") -> str:
    if not rows:
        return f"<p class='empty'>{e(caption)}: {e(empty)}</p>"
    head = "".join(f"<th scope='col'>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def plot(title: str, series: dict[str, list[tuple[float, float]]], y_label: str) -> str:
    """A line chart as inline SVG (no script needed), with a text alternative."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f"<p class='empty'>{e(title)}: no rounds yet</p>"
    w, h, pad = 640, 260, 44
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(y: float) -> float:
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)

    colors = ["#1f6feb", "#d2691e", "#2e8b57"]
    lines, legend = [], []
    for i, (name, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        lines.append(f"<polyline fill='none' stroke='{c}' stroke-width='2' points='{path}'/>")
        lines += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{c}'/>" for x, y in pts]
        legend.append(f"<text x='{pad + 150 * i}' y='16' fill='{c}'>■ {e(name)}</text>")
    axes = (
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' stroke='#888'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' stroke='#888'/>"
        f"<text x='{pad}' y='{h - pad + 16}'>{x0:g}</text><text x='{w - pad}' y='{h - pad + 16}' text-anchor='end'>"
        f"{x1:g}</text><text x='{w / 2}' y='{h - 6}' text-anchor='middle'>round</text>"
        f"<text x='4' y='{pad}'>{y1:.3g}</text><text x='4' y='{h - pad}'>{y0:.3g}</text>"
        f"<text x='4' y='{pad - 14}'>{e(y_label)}</text>"
    )
    last = "; ".join(f"{name} {pts[-1][1]:.4g} at round {pts[-1][0]:g}" for name, pts in series.items() if pts)
    return (
        f"<figure><svg viewBox='0 0 {w} {h}' role='img' aria-label='{e(title)}: {e(last)}'>{axes}{''.join(lines)}"
        f"{''.join(legend)}</svg><figcaption>{e(title)} — {e(last)}</figcaption></figure>"
    )


def bar(label: str, value: int, total: int, cls: str) -> str:
    pct = 0 if total <= 0 else round(100 * value / total, 1)
    return (
        f"<div class='bar'><span class='bar-label'>{e(label)} {value}</span>"
        f"<span class='track' role='meter' aria-label='{e(label)}' aria-valuemin='0' aria-valuemax='{total}' "
        f"aria-valuenow='{value}'><span class='fill {cls}' style='width:{pct}%'></span></span></div>"
    )


def share_bar(permille: int) -> str:
    return (
        f"<div class='bar'><span class='bar-label'>{permille / 10:.1f} %</span><span class='track' role='meter' "
        f"aria-label='credit share' aria-valuemin='0' aria-valuemax='1000' aria-valuenow='{permille}'>"
        f"<span class='fill yes' style='width:{permille / 10:.1f}%'></span></span></div>"
    )


CSS = """
*{box-sizing:border-box} body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center}
header strong{font-size:1.1rem} nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:.25rem;margin:0;padding:0}
nav a{color:#fff;padding:.35rem .6rem;border-radius:6px;text-decoration:none;display:inline-block}
nav a[aria-current=page]{background:#57606a} nav a:focus-visible,button:focus-visible,input:focus-visible,
select:focus-visible,textarea:focus-visible,a:focus-visible{outline:3px solid #e3b341;outline-offset:2px}
main{max-width:1200px;margin:0 auto;padding:1rem} h1{font-size:1.4rem;margin:.3rem 0 1rem}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:.75rem 1rem;margin-bottom:1rem}
h2{font-size:1.1rem;margin:.2rem 0 .6rem} .scroll{overflow-x:auto} table{border-collapse:collapse;width:100%}
caption{text-align:left;font-weight:600;padding:.3rem 0} th,td{border-bottom:1px solid #eaeef2;padding:.3rem .5rem;
text-align:left;vertical-align:top;white-space:nowrap} td.wrap{white-space:normal} code{font-size:.9em}
.empty{color:#57606a} .ok{color:#1a7f37} .bad{color:#cf222e} figure{margin:0} svg{width:100%;max-width:720px;height:auto;
font-size:11px} .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.75rem}
.stat{border:1px solid #d0d7de;border-radius:8px;padding:.5rem .75rem;background:#fff} .stat b{display:block;font-size:1.3rem}
.bar{display:flex;align-items:center;gap:.5rem;margin:.15rem 0} .bar-label{min-width:7rem}
.track{flex:1;max-width:320px;height:.8rem;background:#eaeef2;border-radius:4px;overflow:hidden;display:inline-block}
.fill{display:block;height:100%} .yes{background:#2da44e} .no{background:#cf222e} .abstain{background:#8c959f}
form{display:grid;gap:.5rem;max-width:560px} label{font-weight:600} input,select,textarea,button{font:inherit;padding:.35rem .5rem}
button{background:#1f6feb;color:#fff;border:0;border-radius:6px;cursor:pointer;padding:.4rem .9rem;min-height:2.2rem}
button.secondary{background:#57606a} .votes{display:flex;gap:.4rem;flex-wrap:wrap}
.status{min-height:1.5rem} #flash:empty{display:none} pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:.5rem;border-radius:6px;
max-height:28rem;overflow:auto} .token{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap;margin-left:auto}
.token input{width:14rem} .live{font-size:.85rem;color:#afb8c1}
@media (max-width:600px){main{padding:.5rem} th,td{padding:.25rem .35rem} .bar-label{min-width:5rem}}
"""

SCRIPT = """
(function(){
  const params = new URLSearchParams(location.search);
  if (params.get('token')) { sessionStorage.setItem('koinon-token', params.get('token'));
    params.delete('token'); history.replaceState(null, '', location.pathname + (params.toString() ? '?' + params : '')); }
  const tokenInput = document.getElementById('token');
  tokenInput.value = sessionStorage.getItem('koinon-token') || '';
  tokenInput.addEventListener('change', () => sessionStorage.setItem('koinon-token', tokenInput.value.trim()));
  const live = document.getElementById('live');
  let busy = false;
  async function refresh() {
    if (busy) return; busy = true;
    try { await swap(); } finally { busy = false; }
  }
  async function swap() {
    const r = await fetch(location.href, {headers: {'X-Koinon-Fragment': '1'}});
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    doc.querySelectorAll('[data-live]').forEach(fresh => {
      const old = document.getElementById(fresh.id);
      if (old && old.innerHTML !== fresh.innerHTML) old.innerHTML = fresh.innerHTML;
    });
    live.textContent = 'live · updated ' + new Date().toLocaleTimeString();
  }
  const source = new EventSource('/events');
  source.addEventListener('update', refresh);
  source.onerror = () => { live.textContent = 'live updates paused (reconnecting)'; };
  // a page left open in the back-forward cache would hold its stream, and browsers allow six per host
  window.addEventListener('pagehide', () => source.close());
  document.addEventListener('submit', async ev => {
    const form = ev.target; if (!form.dataset.action) return; ev.preventDefault();
    const status = form.querySelector('.status') || document.getElementById('flash');
    const data = Object.fromEntries(new FormData(form).entries());
    if (ev.submitter && ev.submitter.name) data[ev.submitter.name] = ev.submitter.value;
    status.textContent = 'sending…'; status.className = 'status';
    const r = await fetch(form.dataset.action, {method: 'POST', headers: {'Content-Type': 'application/json',
      'Authorization': 'Bearer ' + (sessionStorage.getItem('koinon-token') || '')}, body: JSON.stringify(data)});
    const answer = await r.json().catch(() => ({error: 'HTTP ' + r.status}));
    status.textContent = r.ok ? answer.message : (answer.error || 'HTTP ' + r.status);
    status.className = 'status ' + (r.ok ? 'ok' : 'bad');
    if (r.ok && form.dataset.reset) form.reset();
    if (r.ok) refresh();
  });
})();
"""


def layout(page: str, title: str, body: str, swarm_name: str) -> str:
    current = ' aria-current="page"'
    items = "".join(f"<li><a href='/{p}'{current if p == page else ''}>{e(label)}</a></li>" for p, label in PAGES)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)} · Koinon</title>
<style>{CSS}</style></head><body>
<header><strong>Koinon · {e(swarm_name)}</strong><nav aria-label="Pages"><ul>{items}</ul></nav>
<div class="token"><label for="token">Write token</label><input id="token" type="password" autocomplete="off"
 aria-describedby="token-help"><span id="token-help" class="live">needed to propose, vote, delegate</span>
<span id="live" class="live" role="status">live</span></div></header>
<main><h1>{e(title)}</h1><p id="flash" class="status" role="status" aria-live="polite"></p>{body}</main><script>{SCRIPT}</script></body></html>"""


# --- pages ----------------------------------------------------------------------------------------------------------
class Pages:
    def __init__(self, home: Path, peer=None) -> None:
        self.home, self.peer = Path(home), peer
        self.h = ["--home", str(self.home)]
        self._charter_cache: tuple[tuple, tuple] | None = None  # (version, (charter, error))

    def _charter(self):
        """``koinon charter --json``, read again only when the ledger changed (a page and its header share it)."""
        now = version(self.home)
        if self._charter_cache is None or self._charter_cache[0] != now:
            self._charter_cache = (now, safe(run_json, ["charter", *self.h]))
        return self._charter_cache[1]

    def name(self) -> str:
        c, _ = self._charter()
        return c["name"] if c else "no swarm yet"

    def swarm(self) -> str:
        charter, err = self._charter()
        credit, _ = safe(run_json, ["credit", *self.h])
        rounds = metrics(self.home)
        live = {}
        if self.peer is not None:
            try:
                live = self.peer.live_peers()
            except Exception:
                live = {}
        me = self.peer.member if self.peer is not None else None
        last = rounds[-1] if rounds else {}
        window = rounds[-6:]
        rate = 0.0
        if len(window) >= 2 and window[-1]["time"] > window[0]["time"]:
            rate = (window[-1].get("tokens", 0) - window[0].get("tokens", 0)) / (window[-1]["time"] - window[0]["time"])
        stats = [
            ("round", last.get("round", "—")),
            ("peers in the last round", last.get("peers", "—")),
            ("online now", len(live) if self.peer is not None else "—"),
            ("tokens/s (this peer)", f"{rate:,.0f}" if rate else "—"),
            ("members", len(charter["members"]) if charter else "—"),
            ("final cut", f"#{charter['final_cut']}" if charter else "—"),
        ]
        cards = "".join(f"<div class='stat'>{e(k)}<b>{e(v)}</b></div>" for k, v in stats)
        shares = {r["member"]: r for r in (credit or {}).get("members", [])}
        members = sorted(set(charter["members"] if charter else []) | set(live) | set(shares))
        rows = []
        for m in members:
            info = live.get(m, {})
            online = "<span class='ok'>online</span>" if m in live else "offline" if self.peer is not None else "—"
            r = shares.get(m, {})
            share = r.get("share_permille", 0)
            rows.append(
                [
                    f"<code>{e(short(m))}</code>{' (this peer)' if m == me else ''}",
                    online,
                    e(info.get("height", "—")),  # announced: the height it trains toward (a hint)
                    e(info["height"] - 1 if isinstance(info.get("height"), int) else "—"),
                    e(r.get("credit", 0)),
                    share_bar(share),
                    e(f"{r.get('verified', 0)}/{r.get('sampled', 0)}"),
                ]
            )
        peers = table(
            "Members and peers",
            ["member", "state", "working on height", "holds height", "credit", "credit share", "verified / sampled"],
            rows,
        )
        note = f"<p class='bad'>{e(err)}</p>" if err else ""
        return (
            f"<section data-live id='swarm-stats' aria-live='polite'><h2>Now</h2>{note}<div class='grid'>{cards}</div>"
            f"</section><section data-live id='swarm-peers'><h2>Peers</h2>{peers}<p class='empty'>Credit counts "
            "only spot-checked, verified samples (docs/verification.md).</p></section>"
        )

    def training(self) -> str:
        rounds = metrics(self.home)
        charter, err = self._charter()
        loss = {
            "inner loss": [(r["round"], r["loss"]) for r in rounds if _finite(r.get("loss"))],
            "eval loss": [(r["round"], r["eval_loss"]) for r in rounds if _finite(r.get("eval_loss"))],
        }
        sent = [(r["round"], r.get("bytes_sent", 0) / 1e6) for r in rounds]
        rows = [
            [
                e(r["round"]),
                e(f"{r['loss']:.4f}" if _finite(r.get("loss")) else "—"),
                e(f"{r['eval_loss']:.4f}" if _finite(r.get("eval_loss")) else "—"),
                e(r.get("peers", "")),
                e(f"{r.get('bytes_sent', 0) / 1e6:.2f}"),
                e(r.get("inner_steps", "")),
                f"<code>{e(str(r.get('theta', ''))[:12])}</code>",
                e("in sync" if r.get("in_sync") else "re-synced" if r.get("resynced") else "out of sync"),
            ]
            for r in reversed(rounds[-30:])
        ]
        config = ""
        if charter and charter.get("config"):
            items = "".join(
                f"<tr><th scope='row'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in charter["config"].items()
            )
            history = charter.get("config_history") or []
            if history:
                h = history[-1]
                origin = (
                    f"set by proposal <a href='/governance#p-{e(h['proposal'])}'><code>{e(str(h['proposal'])[:12])}"
                    f"</code></a> at cut #{e(h['cut'])}"
                    if h.get("proposal")
                    else "from the charter"
                )
            else:
                origin = "from the charter"
            config = (
                f"<p>Configuration <code>{e(charter['config_hash'][:12])}</code>, {origin}.</p>"
                f"<div class='scroll'><table><caption>Training configuration in force</caption>{items}</table></div>"
            )
        return (
            f"<section data-live id='training-plots'><h2>Loss by round</h2>{plot('Loss (nats/byte)', loss, 'nats/byte')}"
            f"{plot('Bytes this peer sent (MB, cumulative)', {'sent': sent}, 'MB')}</section>"
            f"<section data-live id='training-config'><h2>Configuration</h2>{config or e(err or 'no configuration')}"
            f"</section><section data-live id='training-rounds'><h2>Rounds</h2>"
            + table(
                "Newest rounds first (this peer)",
                ["round", "inner loss", "eval loss", "peers", "MB sent (total)", "H", "θ", "state"],
                rows,
            )
            + "</section>"
        )

    def ledger(self, kind: str, author: str, limit: int = 100) -> str:
        from koinon.cli.ledger_cmds import _load_order, _open_store, _utc, body_summary, cut_state

        try:
            store = _open_store(self.home)
        except Exception as err:
            return f"<section><p class='bad'>{e(err)}</p></section>"
        try:
            order = _load_order(store)
            rows = [(i, ev) for i, ev in enumerate(order.final)] + [(None, ev) for ev in order.pending]
            kinds = sorted({ev.kind for _, ev in rows})
            if kind:
                rows = [(i, ev) for i, ev in rows if ev.kind == kind]
            if author:
                rows = [(i, ev) for i, ev in rows if ev.author.endswith(author.strip().lstrip("…"))]
            total = len(rows)
            shown = rows[-limit:][::-1]
            table_rows = [
                [
                    e(f"#{i}" if i is not None else "pending"),
                    e(_utc(ev.time)),
                    f"<a href='/ledger/event/{ev.id.hex()}'><code>{ev.id.hex()[:12]}</code></a>",
                    f"<code>{e(short(ev.author))}</code>",
                    e(ev.kind),
                    f"<span class='wrap'>{e(body_summary(ev, order))}</span>",
                ]
                for i, ev in shown
            ]
            cut_rows = [
                [
                    e(f"#{ev.body['index']}"),
                    e(_utc(ev.time)),
                    f"<a href='/ledger/event/{ev.id.hex()}'><code>{ev.id.hex()[:12]}</code></a>",
                    e(ev.body["size"]),
                    e(cut_state(order, ev.id)),
                ]
                for ev in sorted(store.iter_events(kind="cut"), key=lambda ev: -ev.body["index"])[:10]
            ]
            cut = order.cut
            summary = f"{len(order.final)} final events, {len(order.pending)} pending; " + (
                f"last final cut #{cut.body['index']} (size {cut.body['size']})" if cut else "no final cut yet"
            )
        finally:
            store.close()
        options = "".join(
            f"<option value='{e(k)}'{' selected' if k == kind else ''}>{e(k or 'all kinds')}</option>"
            for k in ["", *kinds]
        )
        credit, _ = safe(run_json, ["credit", *self.h, "--checks", "10"])
        checks = [
            [
                e(c.get("round", "")),
                f"<code>{e(short(c.get('author')))}</code>",
                e(c.get("status", "")),
                f"<code>{e(short(c.get('verifier')))}</code>",
            ]
            for c in (credit or {}).get("checks", [])
        ]
        return (
            "<section><h2>Filter</h2><form method='get' action='/ledger' class='filters'>"
            f"<label for='kind'>Kind</label><select id='kind' name='kind'>{options}</select>"
            f"<label for='author'>Author (last hex digits of the member id)</label><input id='author' name='author' "
            f"value='{e(author)}'><button type='submit'>Filter</button></form></section>"
            f"<section data-live id='ledger-events'><h2>Events</h2><p>{e(summary)}; {total} match, newest "
            f"{len(shown)} shown.</p>"
            + table("Events (newest first)", ["position", "time (UTC)", "id", "author", "kind", "summary"], table_rows)
            + "</section><section data-live id='ledger-cuts'><h2>Cuts</h2>"
            + table("Newest cuts (final once ≥ 2/3 of the members cosigned)", CUT_HEADERS, cut_rows)
            + "</section><section data-live id='ledger-checks'><h2>Verification</h2>"
            + table("Latest resolved spot-checks", ["round", "author", "status", "verifier"], checks, "none yet")
            + "</section>"
        )

    def event(self, event_id: str) -> str:
        from koinon.cli.gov_cmds import _plain
        from koinon.cli.ledger_cmds import _find, _load_order, _open_store, _utc, body_summary

        try:
            store = _open_store(self.home)
            try:
                order = _load_order(store)
                ev = _find(order, event_id)
                position = order.position().get(ev.id)
                head = [
                    ("id", ev.id.hex()),
                    ("author", ev.author),
                    ("sequence", ev.seq),
                    ("kind", ev.kind),
                    ("time (UTC)", _utc(ev.time)),
                    ("position", f"#{position}" if position is not None else "pending (not final yet)"),
                    ("summary", body_summary(ev, order)),
                ]
                body = json.dumps(_plain(ev.body), indent=2, default=str)
            finally:
                store.close()
        except Exception as err:
            return f"<section><p class='bad'>{e(err)}</p></section>"
        proof_html = "<p class='empty'>An inclusion proof exists once a final cut covers the event.</p>"
        if position is not None:
            proof, err = safe(run_cli, ["ledger", "proof", ev.id.hex(), *self.h])
            if proof:
                from koinon.cli.ledger_cmds import verify_proof_text

                try:
                    checked = f"<p class='ok'>verified here: {e(verify_proof_text(proof))}</p>"
                except Exception as v_err:
                    checked = f"<p class='bad'>does not verify: {e(v_err)}</p>"
                proof_html = (
                    f"{checked}<p>Save it and check it anywhere with <code>koinon ledger verify-proof FILE</code>.</p>"
                    f"<pre>{e(proof)}</pre>"
                )
            else:
                proof_html = f"<p class='bad'>{e(err)}</p>"
        rows = "".join(
            f"<tr><th scope='row'>{e(k)}</th><td class='wrap'><code>{e(v)}</code></td></tr>" for k, v in head
        )
        return (
            f"<section><h2>Event</h2><div class='scroll'><table><caption>Signed event</caption>{rows}</table></div>"
            f"<h2>Body</h2><pre>{e(body)}</pre></section><section><h2>Inclusion proof</h2>{proof_html}</section>"
        )

    def governance(self) -> str:
        data, err = safe(run_json, ["proposals", "--all", *self.h])
        charter, _ = self._charter()
        cards = []
        for p in reversed((data or {}).get("proposals", [])):
            t = p.get("tally")
            bars = ""
            if t:
                total = max(t["total"], 1)
                bars = (
                    bar("yes", t["yes"], total, "yes")
                    + bar("no", t["no"], total, "no")
                    + bar("abstain", t["abstain"], total, "abstain")
                    + f"<p class='empty'>weights cast {t['cast']} of {t['total']}; quorum {p['quorum'][0]}/"
                    f"{p['quorum'][1]}, threshold {p['threshold'][0]}/{p['threshold'][1]}"
                    f"{' (so far)' if t.get('so_far') else ''}</p>"
                )
            voters = ", ".join(f"{short(v['member'])}: {v['choice']}" for v in p.get("votes", [])) or "no votes yet"
            window = p.get("cuts")
            when = f"voting cuts #{window['open']}–#{window['close']}" if window else "not in a final cut yet"
            vote_form = ""
            if p.get("state") in ("pending", "active") and p.get("final", True):
                vote_form = (
                    f"<form data-action='/api/vote' aria-label='Vote on {e(p['title'])}'>"
                    f"<input type='hidden' name='proposal' value='{e(p['id'])}'><div class='votes'>"
                    "<button type='submit' name='choice' value='yes'>Vote yes</button>"
                    "<button type='submit' name='choice' value='no' class='secondary'>Vote no</button>"
                    "<button type='submit' name='choice' value='abstain' class='secondary'>Abstain</button></div>"
                    "</form>"
                )
            cards.append(
                f"<article id='p-{e(p['id'])}' class='proposal'><h3>{e(p['title'])}</h3>"
                f"<p><code>{e(p['id'][:12])}</code> · {e(p['action'])} · <b class='state'>{e(p['state'])}</b> · "
                f"{e(when)} · by <code>{e(short(p.get('proposer')))}</code></p>"
                f"<div class='tally'>{bars}<p>Voters: {e(voters)}</p></div>{vote_form}</article>"
            )
        members = "".join(f"<option value='{e(m)}'>{e(short(m))}</option>" for m in (charter or {}).get("members", []))
        forms = f"""
<section><h2>New proposal</h2>
<form data-action="/api/propose" data-reset="1" aria-label="New proposal">
<label for="p-kind">Kind</label>
<select id="p-kind" name="kind"><option value="resolution">resolution (text only)</option>
<option value="set-config">set-config (training configuration)</option><option value="release">release (a checkpoint)</option>
<option value="admit">admit (a member)</option><option value="expel">expel (a member)</option>
<option value="amend-charter">amend-charter (rules)</option></select>
<label for="p-text">Text</label><textarea id="p-text" name="text" rows="2" required></textarea>
<label for="p-set">Changes (set-config, amend-charter): KEY=VALUE, one per line</label>
<textarea id="p-set" name="set" rows="2" placeholder="inner_steps=100"></textarea>
<label for="p-member">Member (admit, expel): id</label><input id="p-member" name="member">
<label for="p-checkpoint">Checkpoint θ hash (release)</label><input id="p-checkpoint" name="checkpoint">
<label for="p-tag">Tag (release)</label><input id="p-tag" name="tag" placeholder="v1">
<label for="p-license">License (release)</label><input id="p-license" name="license" placeholder="Apache-2.0">
<button type="submit">Propose</button><div class="status" role="status"></div></form></section>
<section><h2>Delegate</h2><form data-action="/api/delegate" aria-label="Delegate">
<label for="d-member">Delegate my votes to</label><select id="d-member" name="member">{members}</select>
<div class="votes"><button type="submit" name="mode" value="delegate">Delegate</button>
<button type="submit" name="mode" value="revoke" class="secondary">Revoke my delegation</button></div>
<div class="status" role="status"></div></form></section>"""
        note = f"<p class='bad'>{e(err)}</p>" if err else ""
        head = f"<p>Last final cut #{e(data['final_cut'])}; the next cut is #{e(data['next_cut'])}.</p>" if data else ""
        return (
            f"<section data-live id='gov-head'><h2>Proposals</h2>{note}{head}</section>"
            f"<section data-live id='gov-proposals' aria-label='Proposals'>"
            f"{''.join(cards) or '<p class=empty>no proposals yet</p>'}</section>{forms}"
        )

    def models(self) -> str:
        charter, _ = self._charter()
        releases = (charter or {}).get("releases", {})
        folder = self.home / "checkpoints"
        files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        latest = (folder / "LATEST").read_text().strip() if (folder / "LATEST").exists() else None
        released = {r["checkpoint"][:16]: t for t, r in releases.items()}
        rows = [
            [
                f"<code>{e(p.name[:16])}</code>",
                e(f"{p.stat().st_size / 1e6:.1f} MB"),
                e(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.stat().st_mtime))),
                e(
                    ("latest " if p.name == latest else "")
                    + (f"release {released[p.name[:16]]}" if p.name[:16] in released else "")
                ),
                f"<code>koinon export --checkpoint {e(p.name[:16])} --format hf DIR</code>",
            ]
            for p in files[:30]
        ]
        rel_rows = [
            [
                e(tag),
                f"<code>{e(r['checkpoint'][:16])}</code>",
                e(r["license"]),
                "held here" if r["checkpoint"][:16] + ".safetensors" in {p.name for p in files} else "not held yet",
                f"<a href='/models/card/{e(tag)}'>model card</a>",
            ]
            for tag, r in releases.items()
        ]
        return (
            "<section data-live id='models-releases'><h2>Releases</h2>"
            + table("Releases the swarm voted", ["tag", "checkpoint", "license", "here", "card"], rel_rows, "none yet")
            + "</section><section data-live id='models-checkpoints'><h2>Checkpoints</h2>"
            + table("This member's checkpoints (newest first)", ["θ", "size", "saved (UTC)", "", "export"], rows)
            + "</section><section><h2>Export</h2><form data-action='/api/export' aria-label='Export'>"
            "<label for='x-checkpoint'>Checkpoint (release:TAG, latest or a θ hash)</label>"
            "<input id='x-checkpoint' name='checkpoint' value='latest' required>"
            "<label for='x-dir'>Directory to create on this machine</label><input id='x-dir' name='dir' required>"
            "<button type='submit'>Export as a Hugging Face model</button><div class='status' role='status'></div>"
            "</form></section>"
        )

    def card(self, tag: str) -> str:
        from koinon.cli.gov_cmds import open_view
        from koinon.store.provenance import build_provenance, render_card

        try:
            with open_view(self.home) as v:
                release = v.state.releases.get(tag)
                if release is None:
                    raise CommandError(f"no release {tag!r} has passed this swarm's governance")
                text = render_card(build_provenance(v.store, bytes.fromhex(release["checkpoint"]), tag))
        except Exception as err:
            return f"<section><p class='bad'>{e(err)}</p></section>"
        return f"<section><h2>README.md of release {e(tag)}</h2><pre>{e(text)}</pre></section>"


CUT_HEADERS = ["index", "time (UTC)", "id", "events covered", "state"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and abs(x) != float("inf")


# --- the application ------------------------------------------------------------------------------------------------
def build_app(home: Path, token: str, peer=None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    pages = Pages(home, peer)

    def page(name: str, title: str, render):
        async def handler(request: Request):
            body = await run_in_threadpool(render, request)
            swarm = await run_in_threadpool(pages.name)
            return HTMLResponse(layout(name, title, body, swarm))

        return handler

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-koinon-token", "")
        return bool(given) and hmac.compare_digest(given.strip().encode(), token.encode())

    def action(build):
        async def handler(request: Request):
            if not authorized(request):
                return JSONResponse(
                    {"error": "a write needs the dashboard token (printed at start; in the member folder's "
                     f"{TOKEN_FILE}): paste it into the Write token field"},
                    status_code=401,
                )  # fmt: skip
            try:
                form = await request.json()
                if not isinstance(form, dict):
                    raise ValueError
            except ValueError:
                return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
            try:
                argv = build({k: str(v).strip() for k, v in form.items() if v is not None})
                out = await run_in_threadpool(run_cli, [*argv, "--home", str(home)])
            except CommandError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            return JSONResponse({"message": out.strip().splitlines()[0] if out.strip() else "done", "output": out})

        return handler

    def propose_argv(f: dict) -> list[str]:
        kind = f.get("kind", "resolution")
        argv = ["propose", kind]
        if kind in ("set-config", "amend-charter"):
            changes = [line.strip() for line in f.get("set", "").splitlines() if line.strip()]
            if not changes:
                raise CommandError(f"{kind} needs at least one KEY=VALUE change")
            argv += ["--set", *changes]
        elif kind in ("admit", "expel"):
            argv += [f.get("member", "")]
        elif kind == "release":
            argv += [
                "--checkpoint",
                f.get("checkpoint", ""),
                "--tag",
                f.get("tag", ""),
                "--license",
                f.get("license", ""),
            ]
        elif kind != "resolution":
            raise CommandError(f"the dashboard cannot propose {kind!r}; use `koinon propose {kind}`")
        return [*argv, "--text", f.get("text", "")]

    def vote_argv(f: dict) -> list[str]:
        return ["vote", f.get("proposal", "")[:16], f.get("choice", "")]

    def delegate_argv(f: dict) -> list[str]:
        return ["delegate", "--revoke"] if f.get("mode") == "revoke" else ["delegate", f.get("member", "")]

    def export_argv(f: dict) -> list[str]:
        return ["export", "--checkpoint", f.get("checkpoint", "latest"), "--format", "hf", f.get("dir", "")]

    async def events(request: Request):
        async def stream():
            last, quiet = None, 0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                now = version(home)
                if now != last:
                    last = now
                    yield f"event: update\ndata: {int(time.time())}\n\n"
                    quiet = 0
                else:
                    quiet += 1
                    if quiet >= 15:
                        yield ": keep-alive\n\n"
                        quiet = 0
                await asyncio.sleep(1.0)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", lambda request: RedirectResponse("/swarm")),
        Route("/swarm", page("swarm", "Swarm", lambda r: pages.swarm())),
        Route("/training", page("training", "Training", lambda r: pages.training())),
        Route(
            "/ledger",
            page(
                "ledger",
                "Ledger",
                lambda r: pages.ledger(r.query_params.get("kind", ""), r.query_params.get("author", "")),
            ),
        ),
        Route(
            "/ledger/event/{event_id}", page("ledger", "Ledger event", lambda r: pages.event(r.path_params["event_id"]))
        ),
        Route("/governance", page("governance", "Governance", lambda r: pages.governance())),
        Route("/models", page("models", "Models", lambda r: pages.models())),
        Route("/models/card/{tag}", page("models", "Model card", lambda r: pages.card(r.path_params["tag"]))),
        Route("/events", events),
        Route("/favicon.ico", lambda request: Response(FAVICON, media_type="image/svg+xml")),
        Route("/api/propose", action(propose_argv), methods=["POST"]),
        Route("/api/vote", action(vote_argv), methods=["POST"]),
        Route("/api/delegate", action(delegate_argv), methods=["POST"]),
        Route("/api/export", action(export_argv), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` → (host, port); the host defaults to 127.0.0.1."""
    from koinon.errors import ConfigError

    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--dashboard {text!r}: give [HOST:]PORT, e.g. 8080 or 127.0.0.1:8080") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--dashboard {text!r}: {number} is not a port")
    return host, number


def start_dashboard(home: Path, address: str, peer=None) -> str:
    """Serve the dashboard from a background thread; returns the URL with the token (printed to the user)."""
    import ipaddress
    import socket

    import uvicorn

    from koinon.errors import ConfigError

    host, port = parse_address(address)
    token = load_or_create_token(home)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # accepting from now on: the address printed below already answers
    except OSError as err:
        raise ConfigError(f"--dashboard {address}: cannot listen there: {err.strerror or err}") from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        logger.warning(
            "the dashboard listens on %s: anyone who can reach it can read the swarm's state (writes still need "
            "the token, which travels unencrypted over plain HTTP)",
            host,
        )
    server = uvicorn.Server(
        uvicorn.Config(build_app(home, token, peer), log_level="warning", access_log=False, lifespan="off")
    )
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="koinon-dashboard").start()
    bound_host, bound_port = sock.getsockname()[:2]
    shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::") else bound_host
    url = f"http://{shown}:{bound_port}/"
    (Path(home) / "dashboard.url").write_text(url + "\n")
    return f"{url}?token={token}"


__all__ = ["build_app", "load_or_create_token", "parse_address", "start_dashboard"]
