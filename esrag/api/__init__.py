"""esrag's HTTP API (``esrag serve``): routes -> engine, API keys, problem-details errors, SSE, and an
OpenAI-compatible chat endpoint. ``create_app(engine)`` builds the ASGI app."""

from esrag.api.app import create_app
from esrag.api.deps import ServerOptions

__all__ = ["ServerOptions", "create_app"]
