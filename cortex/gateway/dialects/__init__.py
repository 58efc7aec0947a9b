"""The gateway's faces beyond OpenAI chat: one package per client dialect (its routes, its
mapping to chat completions, its stream writer). A dialect never touches placement: it decodes,
translates, calls ``Gateway.open`` and relays through relay.py.

anthropic/ (Messages, Claude Code), responses/ (Codex), ollama/ and gemini/ each hold
``routes.py`` (handlers), ``translate.py`` (request and answer mapping) and ``stream.py``
(chat chunks -> the dialect's stream events)."""
