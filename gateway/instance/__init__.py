"""One instance: its sockets by user, admission and token checks, the heartbeat, the closes it
decides, durable delivery and the connection analytics."""
