"""HTTP layer: the FastAPI app, its routers and the mapping of domain errors to HTTP."""
