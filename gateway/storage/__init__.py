"""Firestore: the Store contract and its backends, the collection and field names, the write-behind
buffer that batches every pong, coalesced reads, and durable streams."""
