"""compress-ir: a framework-agnostic model compression compiler."""

__version__ = "0.1.0"
