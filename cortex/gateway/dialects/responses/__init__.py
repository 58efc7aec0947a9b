"""OpenAI Responses (`/v1/responses`, Codex): routes, mapping to chat completions, stream writer."""
