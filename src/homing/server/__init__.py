"""The home server: TLS, HTTP routes, storage-backed operations and the runner."""
