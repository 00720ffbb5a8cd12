"""The local OpenAI-compatible endpoint: an ASGI app served by hypercorn in the trio loop."""
