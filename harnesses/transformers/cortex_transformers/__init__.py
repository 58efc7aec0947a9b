"""cortex harness for Hugging Face transformers: in-process generation with continuous batching."""

__version__ = "0.1.0"
