"""Everything that reaches into uvicorn's or wsproto's internals: the trimmed wsproto protocol, its
per-socket parts, the bounded handshake on uvicorn's httptools protocol, and the start-up check of
every library version whose internals the gateway relies on."""
