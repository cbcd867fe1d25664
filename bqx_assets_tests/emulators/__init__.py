"""Emulators of Google services, started on 127.0.0.1 for tests."""
