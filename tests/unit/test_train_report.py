"""report.html from synthetic runs: parses, holds the figures, embeds decodable PNGs, escapes user text, links nowhere."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from berthing.train.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("x")</script> & 很差'


class _Page(HTMLParser):
    """Collects the img sources, every href/src, and the tags still open at the end (to catch broken markup)."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.refs: list[str] = []
        self.stack: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "script":
            self.scripts += 1
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def _history() -> list[dict]:
    points = []
    for step in range(10, 100, 10):
        points.append({"epoch": step / 30, "step": step, "train_loss": 1.2 - step / 100})
        if step % 30 == 0:
            points.append({"epoch": step / 30, "step": step, "dev_loss": 0.9 - step / 200,
                           "dev_metric": 0.7 + step / 1000, "dev_metric_name": "accuracy"})
    return points


def _options() -> dict:
    return {"epochs": 3.0, "batch_size": 32, "learning_rate": 2e-5, "base": "scratch"}


def _package(tmp_path: Path) -> dict:
    levels = [
        {"level": "int8", "passed": True, "inputs_per_s": 812.5, "metrics": {"label_agreement": 0.9921}, "failed": []},
        {"level": "fp32", "passed": True, "inputs_per_s": 301.25, "metrics": {"label_agreement": 1.0}, "failed": []},
    ]
    return {"path": str(tmp_path / "mobile-1.0.berth"),
            "optimization": {"level": "int8", "requested": "auto", "forced": False, "reference": "pytorch",
                             "thresholds": {"label_agreement": 0.98}, "levels": levels},
            "verification": {"method": "onnxruntime vs pytorch", "max_abs_error": 3.2e-06, "tolerance": 0.0001}}


def _classify(tmp_path: Path) -> tuple[Path, dict]:
    per = {"-1": {"precision": 0.8125, "recall": 0.7647, "f1": 0.7879, "support": 17},
           "0": {"precision": 0.6667, "recall": 0.5714, "f1": 0.6154, "support": 7},
           "1": {"precision": 0.9123, "recall": 0.9455, "f1": 0.9286, "support": 55}}
    test = {"accuracy": 0.8734177215189873, "macro_f1": 0.7773, "micro_f1": 0.8734, "weighted_f1": 0.8691,
            "per_label": per, "loss": 0.3817, "count": 79}
    metrics = {"task": "classify", "base": "scratch", "labels": ["-1", "0", "1"], "evaluated_on": "package",
               "package": str(tmp_path / "mobile-1.0.berth"),
               "dev": dict(test, accuracy=0.8481), "test": test,
               "data": {"train": 237, "dev": 79, "test": 79,
                        "skipped": ["reviews.tsv:12: no label", "reviews.tsv:40: empty text"]},
               "options": _options(), "baseline": {"label": ["1"], "accuracy": 0.6962},
               "training": {"steps": 90, "epochs": 3.0, "seconds": 41.25, "samples_per_second": 17.23,
                            "best_dev_figure": 0.79}}
    confusion = (["-1", "0", "1"], [[13, 1, 3], [1, 4, 2], [2, 1, 52]])
    wrong = [{"text": EVIL, "expected": "-1", "predicted": "1"}, {"text": "还行吧", "expected": "0", "predicted": "1"}]
    path = write_report(tmp_path / "report.html", title="mobile <reviews>", task="classify", history=_history(),
                        metrics=metrics, confusion=confusion, wrong=wrong, package=_package(tmp_path))
    return path, metrics


def _ner(tmp_path: Path) -> tuple[Path, dict]:
    per = {"LOC": {"precision": 0.7321, "recall": 0.6894, "f1": 0.7101, "support": 132},
           "ORG": {"precision": 0.4118, "recall": 0.35, "f1": 0.3784, "support": 40},
           "PER": {"precision": 0.8456, "recall": 0.8214, "f1": 0.8333, "support": 84}}
    test = {"precision": 0.7244, "recall": 0.6836, "f1": 0.7034, "accuracy": 0.9512, "per_type": per,
            "loss": 0.1733, "count": 60}
    metrics = {"task": "ner", "base": "scratch", "labels": ["LOC", "ORG", "PER"], "evaluated_on": "checkpoint",
               "package": None, "dev": dict(test, f1=0.6911), "test": test,
               "data": {"train": 180, "dev": 60, "test": 60, "skipped": 0}, "options": _options()}
    history = [dict(h, dev_metric_name="f1") if "dev_metric" in h else h for h in _history()]
    wrong = [{"text": "江泽民在北京", "expected": "江泽民/PER 北京/LOC", "predicted": EVIL}]
    path = write_report(tmp_path / "ner" / "report.html", title="pd98", task="ner", history=history, metrics=metrics,
                        confusion=None, wrong=wrong, package=None)
    return path, metrics


def _check_page(path: Path, images: int) -> str:
    page = path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    assert parser.scripts == 0, "the page runs no script and the wrong predictions' <script> is escaped"
    assert len(parser.images) == images
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE)
        try:
            from PIL import Image
        except ImportError:
            continue
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 150
    assert all(ref.startswith("data:") for ref in parser.refs)
    assert "http://" not in page and "https://" not in page and "//" not in re.sub(r"data:[^\"]+", "", page)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 很差" in page
    return page


def test_classify_report(tmp_path: Path) -> None:
    path, metrics = _classify(tmp_path)
    page = _check_page(path, images=3)  # loss curve, dev accuracy per epoch, confusion matrix
    assert "<title>mobile &lt;reviews&gt;</title>" in page
    assert 'data-value="0.8734177215189873">0.8734</td>' in page  # exact value kept for tools
    for label, row in metrics["test"]["per_label"].items():
        assert f"<td>{label}</td>" in page
        assert all(f">{row[k]:.4f}<" in page for k in ("precision", "recall", "f1"))
        assert f">{row['support']}<" in page
    assert ">0.8481<" in page and ">0.7773<" in page  # dev accuracy, test macro F1
    assert "packaged model" in page and "mobile-1.0.berth" in page
    assert ">812.5<" in page and "int8" in page and "3.2e-06" in page  # optimization and export check
    assert "reviews.tsv:12: no label" in page and ">237<" in page  # data sizes and skipped rows
    assert "learning_rate" in page and "2e-05" in page
    assert "always 1" in page and ">0.6962<" in page  # majority baseline
    assert "90 steps" in page and "17.2 samples/s" in page and "0.7900" in page


def test_ner_report(tmp_path: Path) -> None:
    path, metrics = _ner(tmp_path)
    page = _check_page(path, images=3)  # loss curve, dev F1 per epoch, per-type F1 bars
    for name, row in metrics["test"]["per_type"].items():
        assert f"<td>{name}</td>" in page and f">{row['f1']:.4f}<" in page and f">{row['support']}<" in page
    assert ">0.7034<" in page and ">0.6911<" in page  # test and dev entity F1
    assert "No package was built" in page and "--no-pack" in page
    assert "江泽民/PER 北京/LOC" in page


def test_report_without_history_or_mistakes(tmp_path: Path) -> None:
    metrics = {"task": "classify", "labels": ["a", "b"], "test": {"accuracy": 1.0}, "data": {"train": 2}}
    path = write_report(tmp_path / "r.html", title="t", task="classify", history=[], metrics=metrics, confusion=None,
                        wrong=[], package=None)
    page = path.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    assert parser.images == [] and parser.stack == []
    assert "No training points were logged" in page and "every checked prediction was right" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    path, _ = _classify(tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
         f"--screenshot={shot}", path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
