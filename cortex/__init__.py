"""cortex: one OpenAI/Anthropic endpoint in front of a fleet of local-LLM GPU hosts."""

__version__ = "0.1.0"
