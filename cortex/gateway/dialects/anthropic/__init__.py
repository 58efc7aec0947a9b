"""Anthropic Messages (`/v1/messages`, count_tokens): routes, mapping, stream writer."""
