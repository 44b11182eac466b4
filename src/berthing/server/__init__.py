"""The HTTP server: app factory, protocol adapters, metrics."""
