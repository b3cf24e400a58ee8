"""The OpenAI protocol of the frontend: request validation, response shapes, errors, SSE.

Pure functions over JSON values, with no I/O: `requests` turns a body into a typed
request or a `RequestError`; `responses` builds the bodies and stream chunks; `errors`
holds the error body and the statuses the frontend answers; `sse` frames streams.
"""
