"""Ollama's native API (/api/*), translated to chat completions; see routes.py."""
