"""`ausil-search serve`: the search engine behind an HTTP API, with the model and index kept warm.

- `config`: settings and the checks a bind address, token and `--root` directories imply (no web imports,
  so the CLI refuses a bad configuration before loading anything);
- `search`: the warm read-only engine shared by concurrent queries, kept in step with the writers;
- `writer`: index jobs and removals, each in a child process that takes the index's writer lock;
- `uploads`: multipart uploads streamed to a private directory under a size limit;
- `dedup_runs`: `GET /dedup`'s background runs (one at a time) and their results, kept until the index changes;
- `app`: the FastAPI application and the uvicorn runner.

FastAPI, uvicorn and python-multipart are the `serve` extra: `pip install 'ausil-search[serve]'`.
"""

SERVE_DEPS_HINT = "pip install 'ausil-search[serve]' (fastapi, uvicorn, python-multipart)"
