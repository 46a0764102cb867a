"""maxact: measure how large the activations inside open LLMs get, and where."""

__version__ = "0.1.0"
