"""The OpenAI-compatible HTTP server: `build_app(engine, settings)` makes the FastAPI app.

One concept per file: settings (options), errors (OpenAI error bodies), protocol (request models),
openapi (the /openapi.json description), auth (API key), body_limit (413), metrics (Prometheus),
disconnect and sse (client drops, streaming), deltas and logprobs (response pieces), generation (what
chat and completions share), chat, completions and info (the routes), context (what routes share),
app (the factory).
"""
