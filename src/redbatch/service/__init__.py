"""The HTTP service (``redbatch serve``): a FastAPI application over a store.

``app`` builds it (``create_app``); ``batchers`` holds the batcher routes, ``auth`` the bearer
token check, ``limits`` the body size limit, ``errors`` the one map from errors to statuses
and JSON bodies, ``models`` the request and response bodies. FastAPI and uvicorn are
imported only when the service is used.
"""

from redbatch.service.app import create_app

__all__ = ["create_app"]
