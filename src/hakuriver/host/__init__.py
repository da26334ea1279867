"""The host: HTTP API, durable records, and the shell that drives the pure core."""
