"""The gateway's HTTP side: the aiohttp application (``app``), its routes (``routes``: admit,
read the body, request id, idempotency, find rooms, deliver, answer, each step a module of its
own), the middleware, the events stream, the OpenAPI document, and the server that limits slow
and numerous clients (``serving``)."""
