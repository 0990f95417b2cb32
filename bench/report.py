"""docs/BENCHMARKS.md: the generated part (machine, command, load averages, table, goals met or missed)
and a hand-written analysis below a marker, which a new run keeps."""

from __future__ import annotations

from typing import Any

from bench.common import CORES, DEFAULT_OUTPUT_NAME, percentile
from bench.enqueue import GOALS as ENQUEUE_GOALS
from bench.enqueue import MEASURES as ENQUEUE_MEASURES
from bench.fleet import GOAL_IDLE_CPU as FLEET_IDLE_CPU
from bench.fleet import GOAL_P99_MS as FLEET_P99_MS
from bench.fleet import GOAL_RESCUE_X as FLEET_RESCUE_X
from bench.fleet import GOAL_SIZE as FLEET_SIZE
from bench.scaleout import describe

MARKER = "<!-- analysis: written by hand, kept when `python -m bench` rewrites the part above -->"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def goals(data: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    scale = data.get("scaleout")
    if scale:
        spreads = scale["spreads"]

        def ratio(name: str) -> str:  # the median, its range over the rounds, and whether that decides
            return describe(spreads[name]) if name in spreads else "skipped: no Redis"

        eff = scale["efficiency"]
        out.append((f"efficiency at N = {CORES} ≥ 0.95", ratio("efficiency"), _verdict(eff >= 0.95)))
        pool = scale["sfq_over_pool"]
        out.append(
            (
                "sfq no slower than ProcessPool (c): wall ratio ≤ 1",
                ratio("sfq_over_pool"),
                _verdict(pool <= 1),
            )
        )
        cel = scale["sfq_over_celery"]
        out.append(
            (
                "sfq no slower than Celery (e): wall ratio ≤ 1",
                ratio("sfq_over_celery"),
                _verdict(None if cel is None else cel <= 1),
            )
        )
    noop = data.get("noop")
    if noop:
        p50 = noop["sfq_1"][1]
        out.append(("pickup p50 < 10 ms idle (sfq, 1 worker)", f"{p50:.1f} ms", _verdict(p50 < 10)))
        ratio = noop["sfq_1"][0] / noop["bare_1"][0]
        out.append(
            (
                "no-op throughput per worker ≥ bare Procrastinate's (1 worker)",
                f"{ratio:.3f}",
                _verdict(ratio >= 1),
            )
        )
    enq = data.get("enqueue")
    if enq:
        results = enq["results"]
        sizes = sorted(results, key=int)
        for key, goal in ENQUEUE_GOALS.items():
            medians = {size: percentile(results[size][key], 0.5) for size in sizes}
            slowest = min(medians, key=medians.get)
            out.append(
                (
                    f"{ENQUEUE_MEASURES[key]} ≥ {goal:,} at every size",
                    f"slowest: {medians[slowest]:,.0f} at {int(slowest):,} models "
                    f"(median of {enq['rounds']} rounds, {min(results[slowest][key]):,.0f}-"
                    f"{max(results[slowest][key]):,.0f})",
                    _verdict(medians[slowest] >= goal),
                )
            )
            if len(sizes) > 1:
                fall = 1 - medians[sizes[-1]] / medians[sizes[0]]
                out.append(
                    (
                        f"{ENQUEUE_MEASURES[key]}: falls ≤ 10% from {int(sizes[0]):,} "
                        f"to {int(sizes[-1]):,} models",
                        f"{fall:+.1%} (medians {medians[sizes[0]]:,.0f} and {medians[sizes[-1]]:,.0f})",
                        _verdict(fall <= 0.10),
                    )
                )
        out.append(
            (
                f"{enq['sweep_n']}-job sweep < 1 s",
                f"{enq['sweep_ms']:.0f} ms (elapsed_ms), {enq['sweep_wall_ms']:.0f} ms at the client",
                _verdict(enq["sweep_wall_ms"] < 1000),
            )
        )
    cost = data.get("cost")
    if cost:
        out.append(
            (
                "overhead < 5 % (whole mix, sfq 1 worker)",
                f"{100 * cost['overhead']:.1f}%",
                _verdict(cost["overhead"] < 0.05),
            )
        )
    walk = data.get("walkforward")
    if walk:
        total = walk["bytes_per_prediction"] * 100_000 * 4_000 / 1e9
        out.append(
            (
                "walk-forward predictions of 100,000 models x 4,000 bars well under 10 GB",
                f"{walk['bytes_per_prediction']:.2f} B a prediction: {total:.1f} GB",
                _verdict(total < 5),
            )
        )
    searches = data.get("studies")
    if searches:
        planted = searches["results"]["planted signal"]
        tpe, grid = planted["TPE + successive halving"], planted["grid"]
        share = None if tpe["cpu_to_95"] is None else tpe["cpu_to_95"] / grid["cpu_seconds"]
        out.append(
            (
                "planted signal: TPE + pruning reaches 95% of the grid's best in ≤ 25% of its core-seconds",
                "never reached" if share is None else f"at {share:.1%} of the grid's core-seconds",
                _verdict(share is not None and share <= 0.25),
            )
        )
        largest = max(searches["asks"], key=int)
        warm = searches["asks"][largest]["warm_ms"]
        out.append((f"ask one trial at {largest} trials < 50 ms", f"{warm:.1f} ms", _verdict(warm < 50)))
    sustained = data.get("sustained")
    if sustained:
        out.append(
            (
                f"queue tables bounded over {sustained['duration_s'] / 60:.0f} min of no-op jobs",
                f"{sustained['rate']:.0f} jobs/s, retention {sustained['retention_s']} s",
                _verdict(sustained["bounded"]),
            )
        )
    fleet = data.get("fleet")
    if fleet:
        at = fleet["results"].get(FLEET_SIZE) or fleet["results"].get(str(FLEET_SIZE))
        why = fleet["failed"].get(FLEET_SIZE) or fleet["failed"].get(str(FLEET_SIZE)) or "not run"
        rescue_x = at and at["rescue_all_s"] / fleet["rescue_after_s"]
        out += [
            (
                f"fleet of {FLEET_SIZE} daemons: pickup p99 < {FLEET_P99_MS} ms",
                f"{at['p99_ms']:.1f} ms (p50 {at['p50_ms']:.1f} ms)" if at else why,
                _verdict(at and at["p99_ms"] < FLEET_P99_MS),
            ),
            (
                f"fleet of {FLEET_SIZE} daemons: rescue within {FLEET_RESCUE_X} x SFQ_RESCUE_AFTER_S",
                f"{at['rescue_all_s']:.1f} s = {rescue_x:.2f} x {fleet['rescue_after_s']} s" if at else why,
                _verdict(at and rescue_x <= FLEET_RESCUE_X),
            ),
            (
                f"fleet of {FLEET_SIZE} daemons: idle database CPU < {FLEET_IDLE_CPU}% of a core",
                f"{at['cpu_pct']:.1f}%" if at else why,
                _verdict(at and at["cpu_pct"] < FLEET_IDLE_CPU),
            ),
        ]
    reads = data.get("reads")
    if reads:
        largest = max(reads["results"])
        p50s = {label: percentile(v, 0.5) for label, v in reads["results"][largest].items()}
        slowest = max(p50s, key=p50s.get)
        out.append(
            (
                f"every read path < 100 ms p50 at {largest:,} models",
                f"slowest: {slowest} {p50s[slowest]:.1f} ms",
                _verdict(p50s[slowest] < 100),
            )
        )
    return out


def document(generated: str, data: dict[str, dict[str, Any]], short: bool, previous: str | None) -> str:
    rows = goals(data)
    table = "\n".join(f"| {goal} | {value} | {verdict} |" for goal, value, verdict in rows)
    analysis = previous.split(MARKER, 1)[1] if previous and MARKER in previous else "\n(no analysis yet)\n"
    return (
        f"# Benchmarks\n\nGenerated by `python -m bench` ({DEFAULT_OUTPUT_NAME}); "
        "do not edit above the analysis marker.\n\n"
        f"{generated}\n## Goals\n\n| goal | measured | verdict |\n|---|---|---|\n{table}\n\n"
        + ("Short mode: sizes are tiny, the verdicts mean nothing.\n\n" if short else "")
        + f"{MARKER}\n"
        + analysis.lstrip("\n")
    )
