"""HTTP layer: thin routers, request/response schemas, dependencies and the error table."""
