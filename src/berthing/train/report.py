"""report.html: one self-contained page (inline CSS, PNG plots as data URIs) that tells how a training run went.

Nothing in the page loads from elsewhere, so it can be mailed, archived or opened offline. The plots are drawn with
matplotlib's object API on the Agg canvas (no pyplot, so a caller's backend, e.g. a notebook's, is left alone).
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# CJK families first where a system has them: label names and entity texts are often Chinese.
_FONTS = ["Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "DejaVu Sans"]
_TRAIN, _DEV, _ACCENT = "#2563eb", "#ea580c", "#16a34a"

_CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f9fafb; --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", "PingFang SC",
  "Microsoft YaHei", sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
p.lead { color: var(--muted); margin: 0 0 16px; }
.note { background: #eff6ff; border-left: 4px solid var(--accent); padding: 8px 12px; margin: 12px 0; }
.warn { background: #fff7ed; border-left: 4px solid #ea580c; padding: 8px 12px; margin: 12px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; padding: 4px 6px 0; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); margin: 6px 0 12px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; }
tr:nth-child(even) td { background: #fafafa; }
td.text { max-width: 640px; white-space: pre-wrap; word-break: break-word; }
.bad { color: #b91c1c; font-weight: 600; } .good { color: #15803d; font-weight: 600; }
code { background: #f3f4f6; padding: 1px 5px; border-radius: 4px; font-size: 13px; word-break: break-all; }
.row { display: flex; flex-wrap: wrap; gap: 0 32px; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def write_report(
    path: Path,
    *,
    title: str,
    task: str,
    history: list[dict],
    metrics: dict,
    confusion: tuple[list[str], list[list[int]]] | None,
    wrong: list[dict],
    package: dict | None,
) -> Path:
    """Write the report page to `path` and return it (see CONTRACTS: history points, metrics.json, confusion, wrong)."""
    path = Path(path)
    plots = _plots(task, history, metrics, confusion)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="lead">{_e(_lead(task, metrics))}</p>',
        _provenance(metrics, package),
        _cards(task, metrics.get("test") or {}, metrics.get("baseline")),
        "<h2>Training</h2>",
        _training(metrics.get("training")),
        _figures(plots[:2]) or "<p>No training points were logged.</p>",
        "<h2>Test split</h2>",
        _figures(plots[2:]) or _no_breakdown(task),
        "<h2>Figures</h2>",
        _overall_table(task, metrics),
        '<div class="row">' + "".join(_per_label_table(task, metrics, split) for split in ("test", "dev")) + "</div>",
        "<h2>Wrong predictions</h2>",
        _wrong_table(wrong),
        "<h2>Package</h2>",
        _package(package),
        "<h2>Data</h2>",
        _data(metrics),
        "<h2>Options</h2>",
        _options(metrics),
        f"<footer>{_e(_footer())}</footer>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        + "\n".join(part for part in body if part)
        + "\n</main></body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------- text parts


def _e(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: some go into attributes)."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    """A figure as a table cell: rounded for reading, the exact value kept in data-value for tools and tests."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f'<td class="n">{_e("" if value is None else value)}</td>'
    shown = str(value) if isinstance(value, int) else f"{value:.{digits}f}"
    return f'<td class="n" data-value="{_e(repr(value))}">{shown}</td>'


def _table(head: list[str], rows: Iterable[list[str]], numeric_from: int = 1) -> str:
    """A table from escaped header names and ready-made <td> cells."""
    ths = "".join(f'<th class="{"n" if i >= numeric_from else ""}">{_e(h)}</th>' for i, h in enumerate(head))
    trs = "".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>"


def _lead(task: str, metrics: Mapping[str, Any]) -> str:
    """One line: task, base model, labels."""
    kind = "token classification (NER)" if task == "ner" else "text classification"
    labels = metrics.get("labels") or []
    names = ", ".join(map(str, labels[:12])) + (f" and {len(labels) - 12} more" if len(labels) > 12 else "")
    return f"{kind} fine-tuned from {metrics.get('base') or 'the default model'}; labels: {names or 'none'}"


def _provenance(metrics: Mapping[str, Any], package: Mapping[str, Any] | None) -> str:
    """Which model the figures are of: the packaged one is what `berthing serve` serves."""
    if metrics.get("evaluated_on") == "package":
        where = metrics.get("package") or (package or {}).get("path") or "the package"
        return (f'<div class="note">The figures are of the packaged model <code>{_e(where)}</code>, run through berthing'
                " as the server runs it: what this report shows is what <code>berthing serve</code> answers.</div>")
    return ('<div class="warn">No package was built: the figures are of the checkpoint folder as <code>berthing serve</code>'
            " loads it with its default settings.</div>")


def _headline(task: str) -> list[tuple[str, str]]:
    """The test figures shown as cards, per task."""
    if task == "ner":
        return [("f1", "entity F1"), ("precision", "precision"), ("recall", "recall"), ("accuracy", "token accuracy")]
    return [("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("micro_f1", "micro F1"), ("weighted_f1", "weighted F1")]


def _cards(task: str, test: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    """The test split's main figures, large; for classification the majority-class baseline beside them."""
    cards = [
        f'<div class="card"><div class="k">test {_e(name)}</div><div class="v">{test[key]:.4f}</div></div>'
        for key, name in _headline(task) if isinstance(test.get(key), int | float)
    ]
    if baseline and isinstance(baseline.get("accuracy"), int | float):
        label = ", ".join(map(str, baseline.get("label") or []))
        cards.append(f'<div class="card"><div class="k">majority baseline (always {_e(label)})</div>'
                     f'<div class="v">{baseline["accuracy"]:.4f}</div></div>')
    if isinstance(test.get("count"), int):
        cards.append(f'<div class="card"><div class="k">test {"sentences" if task == "ner" else "rows"}</div>'
                     f'<div class="v">{test["count"]}</div></div>')
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _training(training: Mapping[str, Any] | None) -> str:
    """One line: steps, epochs, time, speed, and the best dev figure that chose the checkpoint."""
    if not training:
        return ""
    parts = [f"{training.get('steps')} steps"]
    if isinstance(training.get("epochs"), int | float):
        parts.append(f"{training['epochs']:.2f} epochs")
    if isinstance(training.get("seconds"), int | float):
        parts.append(f"{training['seconds']:.1f} s")
    if isinstance(training.get("samples_per_second"), int | float):
        parts.append(f"{training['samples_per_second']:.1f} samples/s")
    best = training.get("best_dev_figure")
    tail = f"; the checkpoint kept had the best dev figure, {best:.4f}" if isinstance(best, int | float) else ""
    return f"<p>Trained {_e(', '.join(parts))}{_e(tail)}.</p>"


def _overall_table(task: str, metrics: Mapping[str, Any]) -> str:
    """Dev and test side by side: the headline figures, loss and count."""
    keys = [k for k, _ in _headline(task)] + ["loss", "count"]
    splits = [s for s in ("dev", "test") if isinstance(metrics.get(s), Mapping)]
    if not splits:
        return "<p>No figures.</p>"
    rows = [[f"<td>{_e(k.replace('_', ' '))}</td>", *(_num(metrics[s].get(k)) for s in splits)] for k in keys
            if any(metrics[s].get(k) is not None for s in splits)]
    return _table(["figure", *splits], rows)


def _per_label_table(task: str, metrics: Mapping[str, Any], split: str) -> str:
    """Precision, recall, F1 and support per label (classify) or entity type (NER, seqeval)."""
    figures = metrics.get(split) or {}
    per = figures.get("per_type" if task == "ner" else "per_label") or {}
    if not per:
        return ""
    rows = [[f"<td>{_e(name)}</td>", *(_num(v.get(k)) for k in ("precision", "recall", "f1", "support"))]
            for name, v in per.items()]
    what = "entity type" if task == "ner" else "label"
    return f"<div><h3>{_e(split)}: per {what}</h3>" + _table([what, "precision", "recall", "F1", "support"], rows) + "</div>"


def _wrong_table(wrong: list[dict]) -> str:
    """A sample of the test split's mistakes; every text is escaped (it is user data)."""
    if not wrong:
        return "<p>None in the sample: every checked prediction was right.</p>"
    rows = [[f'<td class="n">{i}</td>', f'<td class="text">{_e(w.get("text", ""))}</td>',
             f'<td class="good">{_e(w.get("expected", ""))}</td>', f'<td class="bad">{_e(w.get("predicted", ""))}</td>']
            for i, w in enumerate(wrong, 1)]
    return (f"<p>The first {len(wrong)} wrong prediction{'s' if len(wrong) != 1 else ''} on the test split.</p>"
            + _table(["#", "text", "expected", "predicted"], rows, numeric_from=9))


def _package(package: Mapping[str, Any] | None) -> str:
    """The package file, its optimization level with every level tried, and the export check."""
    if not package:
        return "<p>No package was built (<code>--no-pack</code>).</p>"
    parts = [f"<p>File: <code>{_e(package.get('path', ''))}</code></p>"]
    opt = package.get("optimization")
    if opt:
        forced = ' <span class="bad">forced past its thresholds</span>' if opt.get("forced") else ""
        parts.append(f"<p>Optimization kept: <b>{_e(opt.get('level'))}</b> (requested {_e(opt.get('requested'))}),"
                     f" verified against {_e(opt.get('reference', 'the PyTorch model'))}{forced}.</p>")
        names = sorted({k for lv in opt.get("levels", []) for k in (lv.get("metrics") or {})})
        rows = [[f"<td>{_e(lv.get('level'))}{' (kept)' if lv.get('level') == opt.get('level') else ''}</td>",
                 f'<td class="{"good" if lv.get("passed") else "bad"}">{"passed" if lv.get("passed") else "failed"}</td>',
                 _num(lv.get("inputs_per_s"), 1), *(_num((lv.get("metrics") or {}).get(k)) for k in names),
                 f"<td>{_e('; '.join(lv.get('failed') or []) or (lv.get('error') or ''))}</td>"]
                for lv in opt.get("levels", [])]
        if rows:
            parts.append(_table(["level", "verification", "inputs/s", *names, "notes"], rows, numeric_from=2))
        if opt.get("thresholds"):
            parts.append(f"<p>Thresholds: <code>{_e(json.dumps(opt['thresholds'], ensure_ascii=False))}</code></p>")
    else:
        parts.append("<p>Optimization: none (the fp32 export).</p>")
    check = package.get("verification")
    if check:
        parts.append(f"<p>Export check: {_e(check.get('method', ''))}, max abs error "
                     f"<b>{_e(check.get('max_abs_error'))}</b> (tolerance {_e(check.get('tolerance'))}).</p>")
    return "\n".join(parts)


def _data(metrics: Mapping[str, Any]) -> str:
    """Split sizes and the rows skipped with --skip-bad-rows (with why, when the list was given)."""
    data = metrics.get("data") or {}
    skipped = data.get("skipped", 0)
    count = len(skipped) if isinstance(skipped, list) else skipped
    rows = [[f"<td>{s}</td>", _num(data.get(s))] for s in ("train", "dev", "test") if s in data]
    rows.append(["<td>skipped</td>", _num(count)])
    out = _table(["split", "rows"], rows)
    if isinstance(skipped, list) and skipped:
        items = "".join(f"<li><code>{_e(s)}</code></li>" for s in skipped[:20])
        more = f"<p>and {len(skipped) - 20} more.</p>" if len(skipped) > 20 else ""
        out += f"<ul>{items}</ul>{more}"
    return out


def _options(metrics: Mapping[str, Any]) -> str:
    """Every option the run used, as given to berthing.train."""
    options = metrics.get("options") or {}
    if not options:
        return "<p>Not recorded.</p>"
    rows = [[f"<td>{_e(k)}</td>", f"<td><code>{_e(json.dumps(v, ensure_ascii=False, default=str))}</code></td>"]
            for k, v in sorted(options.items())]
    return _table(["option", "value"], rows, numeric_from=9)


def _no_breakdown(task: str) -> str:
    """Why the test plot is missing."""
    return "<p>No per-type figures.</p>" if task == "ner" else "<p>No confusion matrix (multi-label data).</p>"


def _footer() -> str:
    """Who wrote the page and when."""
    from berthing.version import __version__

    return f"berthing {__version__} · written {datetime.now(UTC).isoformat(timespec='seconds')}"


# ---------------------------------------------------------------- plots


def _figures(plots: list[tuple[str, str]]) -> str:
    """<figure>s of (caption, data URI) pairs."""
    return (f'<div class="plots">{"".join(_figure(c, u) for c, u in plots)}</div>') if plots else ""


def _figure(caption: str, uri: str) -> str:
    return f'<figure><img alt="{_e(caption)}" src="{uri}"><figcaption>{_e(caption)}</figcaption></figure>'


def _plots(task: str, history: list[dict], metrics: Mapping[str, Any],
           confusion: tuple[list[str], list[list[int]]] | None) -> list[tuple[str, str]]:
    """Loss curve, dev figure per epoch, then the test breakdown; each as (caption, PNG data URI)."""
    import matplotlib

    out: list[tuple[str, str]] = []
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": _FONTS, "font.size": 10}), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Glyph|findfont).*")
        if any("train_loss" in h or "dev_loss" in h for h in history):
            out.append(("Loss: train and dev", _loss_plot(history)))
        if any("dev_metric" in h for h in history):
            name = next(h.get("dev_metric_name") for h in history if "dev_metric" in h) or "dev figure"
            out.append((f"Dev {name} per epoch", _dev_plot(history, name)))
        if task == "ner":
            per = (metrics.get("test") or {}).get("per_type") or {}
            if per:
                out.append(("Test F1 per entity type", _type_bars(per)))
        elif confusion and confusion[0]:
            out.append(("Confusion matrix, test split (rows: true label, columns: predicted)", _confusion_plot(*confusion)))
    return out


def _png(fig: Any) -> str:
    """A figure as a base64 PNG data URI (no metadata: the page holds no URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _new(width: float = 6.0, height: float = 3.6) -> tuple[Any, Any]:
    """A figure on the Agg canvas and its one axes, styled alike."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
    return fig, ax


def _loss_plot(history: list[dict]) -> str:
    """Train and dev loss against the step (the epoch when steps were not logged)."""
    fig, ax = _new()
    x_key = "step" if all("step" in h for h in history) else "epoch"
    for key, colour, label in (("train_loss", _TRAIN, "train"), ("dev_loss", _DEV, "dev")):
        points = [(h[x_key], h[key]) for h in history if h.get(key) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=colour, label=label, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel(x_key)
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    return _png(fig)


def _dev_plot(history: list[dict], name: str) -> str:
    """The dev figure at each evaluation, labelled with its value."""
    fig, ax = _new()
    points = [(h.get("epoch", i), h["dev_metric"]) for i, h in enumerate(history) if h.get("dev_metric") is not None]
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, color=_ACCENT, marker="o")
    for x, y in points:
        ax.annotate(f"{y:.4f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    best = max(range(len(ys)), key=ys.__getitem__)
    ax.scatter([xs[best]], [ys[best]], s=90, facecolors="none", edgecolors="black", zorder=3, label="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"dev {name}")
    low, high = min(ys), max(ys)
    ax.set_ylim(max(0.0, low - 0.1 * (high - low + 0.05)), min(1.0, high + 0.15 * (high - low + 0.05)) if high <= 1 else None)
    ax.legend(frameon=False, loc="lower right")
    return _png(fig)


def _confusion_plot(labels: list[str], matrix: list[list[int]]) -> str:
    """Counts in cells, shaded by each true label's share so small classes show too."""
    size = max(3.6, 0.55 * len(labels) + 2.0)
    fig, ax = _new(size + 0.8, size)
    ax.grid(False)
    shares = [[c / (sum(row) or 1) for c in row] for row in matrix]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                    color="white" if shares[i][j] > 0.55 else "black")
    ticks = range(len(labels))
    ax.set_xticks(ticks, [str(label) for label in labels], rotation=45 if len(labels) > 6 else 0, ha="right"
                  if len(labels) > 6 else "center")
    ax.set_yticks(ticks, [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def _type_bars(per_type: Mapping[str, Mapping[str, Any]]) -> str:
    """F1 per entity type, with its value and support."""
    names = list(per_type)
    f1 = [float(per_type[n].get("f1") or 0.0) for n in names]
    fig, ax = _new(max(4.0, 0.9 * len(names) + 2.0), 3.6)
    bars = ax.bar([f"{n}\n(n={per_type[n].get('support', '?')})" for n in names], f1, color=_TRAIN)
    for bar, value in zip(bars, f1, strict=True):
        ax.annotate(f"{value:.4f}", (bar.get_x() + bar.get_width() / 2, value), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("F1")
    return _png(fig)
