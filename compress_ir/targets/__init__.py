"""Compilation targets (arm, x86, cuda and named variants) as a registry."""
