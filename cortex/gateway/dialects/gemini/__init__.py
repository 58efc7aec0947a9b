"""Google's Gemini API (/v1beta/models/...), translated to chat completions; see routes.py."""
