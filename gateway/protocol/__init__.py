"""The socket protocol as plain code: frames, close codes, one socket's decisions, rooms and abuse
limits. No I/O, and no import from any other wing (only ``gateway.exceptions``)."""
