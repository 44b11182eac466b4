"""From a checkpoint to a servable artifact: find it, read it, export it."""
