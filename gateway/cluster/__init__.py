"""Every instance at once: the fan-out wire over Pub/Sub, the instance directory in Firestore, and
the cross-instance operations (send, broadcast, stats, rooms, sign-out, timeouts)."""
