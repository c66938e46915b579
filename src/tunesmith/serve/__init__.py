"""The OpenAI-compatible HTTP server on the generation engine: routes, auth, limits, metrics."""
