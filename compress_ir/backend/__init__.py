"""TVM backend: build, export, verify and run compiled artifacts (optional `tvm` extra)."""
