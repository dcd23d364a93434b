"""The ground floor of compress-ir: IR, pass infrastructure, verification, metrics.

Nothing here imports from `compress_ir.passes`, `compress_ir.frontends` or the CLI.
"""
