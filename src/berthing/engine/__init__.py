"""The engine: a task, a runtime and a batcher put together as one servable Model."""
