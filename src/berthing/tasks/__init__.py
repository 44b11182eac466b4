"""Task logic (tokenize in, numpy out): one module a task, no runtime or HTTP knowledge."""
