"""Every task's int8 on this CPU: `berthing pack --optimize auto` of the tests' tiny seeded models, each level's figures.

Why: int8 is tuned and measured on MiniLM (an embedder); the other tasks' heads and graphs differ (classification,
NER, QA, rerank on BERT, RoBERTa, DistilBERT, ELECTRA, XLM-R), and int8 kernels differ by CPU class. This prints,
for each model, every level's verification figures against PyTorch, the level kept, and its probe's figures and cost.

    .venv/bin/python benchmarks/tasks_int8.py                          # the default set, ~3 minutes on 2 cores
    .venv/bin/python benchmarks/tasks_int8.py --kinds ner,mpnet-qa
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.models import build  # noqa: E402

from berthing.packaging.package import pack  # noqa: E402
from berthing.packaging.tune import OptimizeRequest  # noqa: E402
from berthing.runtime.cpu import detect  # noqa: E402

KINDS = "embed,classify,ner,qa,rerank,roberta-classify,distilbert-ner,electra-qa,xlm-roberta-rerank"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=KINDS, help="tiny model kinds (tests/support/models.py)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "tests" / "tiny")
    args = parser.parse_args(argv)
    print(f"cpu: {detect().describe()}")
    print("| model | level | passed | inputs/s | figures | kept | probe figures | probe s |")
    print("|---|---|---|---:|---|---|---|---:|")
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory(prefix="tasks-int8-") as tmp:
            _, manifest = pack(build(kind, args.cache_dir), Path(tmp), "m", "1.0", archive=False,
                               optimize=OptimizeRequest("auto"))
        record, probe = manifest["optimization"], manifest["probe"]
        for level in record["levels"]:
            kept = level["level"] == record["level"]
            print(f"| {kind} | {level['level']} | {'yes' if level['passed'] else 'NO'} | {level['inputs_per_s']:.0f} | "
                  f"{json.dumps(level['metrics'])} | {'*' if kept else ''} | "
                  f"{json.dumps(probe['metrics']) if kept else ''} | {probe['seconds'] if kept else ''} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
