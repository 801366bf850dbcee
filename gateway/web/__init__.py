"""The HTTP face: the Litestar app and its lifespan, the REST routes and their guards, the raw ASGI
socket handler, static files and metrics."""
