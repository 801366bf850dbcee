"""WebSocket presence gateway: sockets and pings here, the heartbeat record in Firestore."""
