"""The HTTP service: app factory + lifespan, one error handler, routes per resource, SSE/WebSocket."""
