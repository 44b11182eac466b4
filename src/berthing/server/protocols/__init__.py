"""Protocol adapters: HTTP bytes <-> InferenceRequest/result; they never touch tensors."""
