"""Fine-tuning: from labelled data (TSV, CSV, JSONL, CoNLL, People's Daily) to a verified package and a report."""
