"""Shared fixtures. Peers (mosquitto, serial pty pairs, the emulator) live in tests/peers/."""
