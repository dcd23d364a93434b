"""The ground floor of compress-ir: IR, pass infrastructure, verification, metrics.

Nothing here imports the passes package, the frontends or the CLI.
"""
