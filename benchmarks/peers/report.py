"""The markdown report: best of each peer per case, every variant's figures, start-up, memory, vectors, versions.

Why this layout: the question is "which system, at its best setting here, serves the most sentences at what latency",
so the first table keeps each peer's best variant per case; the full table below keeps every variant, so a best-of
choice can be checked.
"""

from __future__ import annotations

from typing import Any

from servebench.cpu import NOISY_PCT

from .bench import CASES, ST_CASES, SystemResult

PEER_NAMES = {
    "berthing": "berthing", "torchserve": "TorchServe", "infinity": "Infinity", "st": "sentence-transformers (in-process)",
}


def _peer(system: str) -> str:
    return system.split("-", 1)[0]


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def best_table(results: list[SystemResult], cases: list[str]) -> str:
    """One row per peer: per case, the variant with the most sentences/s (named when the peer has several)."""
    head = "| system | " + " | ".join(cases) + " |\n|---|" + "---:|" * len(cases)
    rows = []
    for peer, title in PEER_NAMES.items():
        mine = [r for r in results if _peer(r.system) == peer]
        if not mine:
            continue
        cells = []
        for case in cases:
            got = [(c, r) for r in mine for c in r.cases if c.case == case]
            if not got:
                failed = next((r.error for r in mine if r.error), None)
                cells.append("failed" if failed else "n/a")
                continue
            c, r = max(got, key=lambda cr: cr[0].sentences_per_s)
            variant = r.system.split("-", 1)[1] if "-" in r.system else "default"
            which = f" `{variant}`" if len(mine) > 1 else ""
            flag = " ⚠" if c.other_cpu_pct > NOISY_PCT else ""
            cells.append(f"**{c.sentences_per_s:.0f}** ({c.p50_ms:.0f} / {c.p99_ms:.0f} ms){which}{flag}")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


def full_table(results: list[SystemResult], cases: list[str]) -> str:
    head = ("| case | system | req/s | sentences/s | p50 ms | p90 ms | p99 ms | errors | server CPU % | other CPU % |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for case in cases:
        for r in results:
            for c in r.cases:
                if c.case != case:
                    continue
                flag = " ⚠" if c.other_cpu_pct > NOISY_PCT else ""
                errors = f"{c.errors} {c.error_kinds}" if c.errors else "0"
                rows.append(f"| {case} | {r.system} | {c.requests_per_s:.1f} | {c.sentences_per_s:.1f} | {c.p50_ms:.1f} | "
                            f"{c.p90_ms:.1f} | {c.p99_ms:.1f} | {errors} | {_num(c.server_cpu_pct, 0)} | "
                            f"{c.other_cpu_pct:.0f}{flag} |")
    return "\n".join([head, *rows])


def systems_table(results: list[SystemResult]) -> str:
    head = ("| system | what | cold start s | idle RSS MiB | peak RSS MiB | processes | vectors vs ST (min cosine) | note |\n"
            "|---|---|---:|---:|---:|---:|---|---|")
    rows = []
    for r in results:
        c = r.correctness
        vec = "" if not c else (f"{'ok' if c['ok'] else 'FAILED'} ({c['min_cosine']})" if "min_cosine" in c
                                else f"FAILED: {c.get('why', '')}")
        note = r.error.splitlines()[0] if r.error else ""
        rows.append(f"| {r.system} | {r.label} | {_num(r.cold_start_s, 2)} | {_num(r.idle_rss_mb, 0)} | "
                    f"{_num(r.peak_rss_mb, 0)} | {r.processes or ''} | {vec} | {note} |")
    return "\n".join([head, *rows])


def versions_table(results: list[SystemResult]) -> str:
    rows = ["| system | versions |", "|---|---|"]
    for r in results:
        v = ", ".join(f"{k} {val}" for k, val in r.versions.items() if k != "worker" and val)
        rows.append(f"| {r.system} | {v} |")
    return "\n".join(rows)


def markdown(report: dict[str, Any], results: list[SystemResult], cases: list[str]) -> str:
    m = report["machine"]
    labels = "; ".join(f"`{c}` = {CASES[c][0]}" for c in cases)
    st_labels = "; ".join(f"`{c}`: {ST_CASES[c][0]}" for c in cases if c in ST_CASES)
    noisy = [f"{r.system}/{c.case}" for r in results for c in r.cases if c.other_cpu_pct > NOISY_PCT]
    parts = [
        f"## Peers on all-MiniLM-L6-v2, {report['when']}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}. Command: "
        f"`.venv/bin/python benchmarks/peers/run.py {' '.join(report['argv'])}`".rstrip() + ". "
        f"{report['settings']['duration_s']:g} s per case after {report['settings']['warmup_s']:g} s of warm-up; "
        f"each system alone on the machine.",
        "",
        f"Cases: {labels}. sentence-transformers: {st_labels}.",
        "",
        "### Best of each system: sentences/s (p50 / p99 ms)",
        "",
        best_table(results, cases),
        "",
        "### Every variant",
        "",
        full_table(results, cases),
        "",
        "Server CPU: the whole process tree's, percent of one core. Other CPU: everything else on the machine "
        f"(⚠ above {NOISY_PCT:.0f}%: disturbed, not comparable).",
        "",
        "### Start-up, memory, vectors",
        "",
        systems_table(results),
        "",
        "Cold start: process launch to the first successful answer (caches from a previous start in place). RSS: summed "
        "over the server's process tree, sampled every 0.5 s from /proc (idle: 1 s after the first answer).",
        "",
        "### Versions",
        "",
        versions_table(results),
    ]
    if noisy:
        parts += ["", f"WARNING: other processes used > {NOISY_PCT:.0f}% of a core during {', '.join(noisy)}: rerun those."]
    return "\n".join(parts)
