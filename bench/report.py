"""Ratios between the variants of bench/run.py, the issue's goals, and the markdown table of the results."""

from __future__ import annotations

GOALS = dict(
    traffic=500.0,  # bytes(b) / bytes(c) at least this
    loss_gap=1.02,  # loss(c) / loss(b) at most this
    throughput=0.95,  # tokens/s per peer (c) / (a) at least this, at the same threads per process
)


def _ok(v: dict | None) -> bool:
    return bool(v) and "error" not in v


def _div(x: float | None, y: float | None) -> float | None:
    return None if x is None or not y else x / y


def ratios(variants: dict[str, dict], peers: int, inner_steps: list[int]) -> dict:
    get = lambda key, field: variants[key][field] if _ok(variants.get(key)) else None
    b_bytes, b_loss = get("b_dp", "bytes_sent_per_peer"), get("b_dp", "eval_loss")
    alone, contended = get("a_alone", "tokens_per_s_per_peer"), get("a_contended", "tokens_per_s_per_peer")
    ref_loss = get(f"a_batch{8 * peers}", "eval_loss")
    out: dict = dict(
        goals=GOALS,
        loss_b_over_a_batch=_div(b_loss, ref_loss),
        tokens_per_s_b_over_a_alone=_div(get("b_dp", "tokens_per_s_per_peer"), alone),
        tokens_per_s_b_over_a_contended=_div(get("b_dp", "tokens_per_s_per_peer"), contended),
    )
    for h in inner_steps:
        key = f"c_h{h}"
        tps = get(key, "tokens_per_s_per_peer")
        r = dict(
            bytes_b_over_c=_div(b_bytes, get(key, "bytes_sent_per_peer")),
            loss_c_over_b=_div(get(key, "eval_loss"), b_loss),
            loss_c_over_a_batch=_div(get(key, "eval_loss"), ref_loss),
            tokens_per_s_c_over_a_alone=_div(tps, alone),
            tokens_per_s_c_over_a_contended=_div(tps, contended),
        )
        met = lambda value, ok: None if value is None else bool(ok(value))
        r["goals_met"] = dict(
            traffic=met(r["bytes_b_over_c"], lambda x: x >= GOALS["traffic"]),
            loss_gap=met(r["loss_c_over_b"], lambda x: x <= GOALS["loss_gap"]),
            throughput_vs_alone=met(r["tokens_per_s_c_over_a_alone"], lambda x: x >= GOALS["throughput"]),
            throughput_vs_contended=met(r["tokens_per_s_c_over_a_contended"], lambda x: x >= GOALS["throughput"]),
        )
        out[f"h{h}"] = r
    return out


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    if n == 0:
        return "0"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _goal(value: float | None, met: bool | None) -> str:
    return "–" if value is None else f"{value:.3g} {'✅' if met else '❌'}"


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"Measured {results['date']} on {m['cpu']}, {m['cpu_count']} CPUs, {m['memory_gib']} GiB "
        f"({m['platform']}; Python {m['python']}, torch {m['torch']}, hivemind {m['hivemind']}). "
        f"Model {s['model_size']}, seq_len {s['seq_len']}, S = {s['steps_per_peer']} steps of batch "
        f"{s['batch_size']} per peer, {s['threads_per_process']} torch thread per process, "
        f"fp16 on the wire, min_matchmaking_time {s['matchmaking_time_b']} s in (b), "
        f"--matchmaking-time of (c): {s['matchmaking_time_c']}.",
        "",
        "| variant | processes | tokens/peer | eval loss (nats/byte) | bytes sent/peer | tokens/s/peer "
        "| training phase (s) | wall (s) | averaged by all | other jobs' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in results["variants"].values():
        if "error" in v:
            lines.append(f"| {v['title']} | failed: {v['error'].splitlines()[0][:80]} |||||||||")
            continue
        same = "" if v["peers"] == 1 or v["theta_identical"] else " (θ differ)"
        lines.append(
            f"| {v['title']} | {v['peers']} | {v['tokens_per_peer']:,.0f} | {v['eval_loss']:.4f}{same} "
            f"| {_bytes(v['bytes_sent_per_peer'])} | {v['tokens_per_s_per_peer']:,.0f} "
            f"| {v['train_phase_s']:.1f} | {v['wall_s']:.1f} | {_f(v['full_group_share'], '.1%')} "
            f"| {v['other_jobs_cpu_share']:.0%} |"
        )
    r = results["ratios"]
    g = r["goals"]
    lines += [
        "",
        f"| (c) vs (b), (a) | bytes (b)/(c) (goal ≥ {g['traffic']:g}) | loss (c)/(b) (goal ≤ {g['loss_gap']:g}) "
        f"| tokens/s (c)/(a) alone (goal ≥ {g['throughput']:g}) | tokens/s (c)/(a) contended |",
        "|---|---:|---:|---:|---:|",
    ]
    for h in s["inner_steps"]:
        x = r[f"h{h}"]
        met = x["goals_met"]
        lines.append(
            f"| H = {h} | {_goal(x['bytes_b_over_c'], met['traffic'])} | {_goal(x['loss_c_over_b'], met['loss_gap'])} "
            f"| {_goal(x['tokens_per_s_c_over_a_alone'], met['throughput_vs_alone'])} "
            f"| {_goal(x['tokens_per_s_c_over_a_contended'], met['throughput_vs_contended'])} |"
        )
    lines += [
        "",
        f"Sanity: loss (b) / loss (a, batch {8 * s['peers']}) = {_f(r['loss_b_over_a_batch'], '.4f')}; "
        f"tokens/s (b)/(a) = {_f(r['tokens_per_s_b_over_a_alone'], '.3f')} alone, "
        f"{_f(r['tokens_per_s_b_over_a_contended'], '.3f')} contended. "
        f"Whole benchmark: {results['total_seconds']:.0f} s. Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)
