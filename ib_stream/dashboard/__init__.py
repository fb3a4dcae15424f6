"""The order-flow dashboard's page, scripts and styles (package data under `static/`), served at `/` by
`ib_stream.api.routes.dashboard`; the page reads only the public HTTP / WebSocket API."""
