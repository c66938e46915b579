"""The generation engine: continuous batching with a KV cache per sequence, shared by eval, generate,
chat, synthesis and the HTTP server (see requests.py for the contract)."""
