"""berthing against its peers (TorchServe, Infinity, sentence-transformers) on all-MiniLM-L6-v2: see README.md here."""
