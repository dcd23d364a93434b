"""Streamed compression of models whose weights live in ONNX external data (> 2 GB).

Weights are read one tensor at a time from the source's external-data file and the
result is written tensor by tensor to the output's, so the whole model is never held
in memory (let alone twice). See `engine.stream_sparsify`.
"""
