"""Test support: tiny seeded models and real servers on loopback."""
