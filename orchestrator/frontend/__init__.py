"""The OpenAI-compatible frontend."""
