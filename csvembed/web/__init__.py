"""The HTTP face of csvembed: a FastAPI app over the library facade (csvembed.api.Csvembed).

Every route answers what the matching CLI command prints with --json, and every error is the CLI's
one-line message as {"detail": ...}. `csvembed serve` runs it under uvicorn.
"""
