"""Engines behind one interface: `mock` (the CPU simulator) and `sglang`."""
