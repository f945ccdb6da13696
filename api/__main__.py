"""Run the API: ``python -m api`` (host and port from DUB_API_HOST / DUB_API_PORT)."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from dubcore.errors import ConfigurationError
from dubcore.settings import get_settings


def main() -> None:
    settings = get_settings()
    try:
        app = create_app(settings)
    except ConfigurationError as e:  # a missing secret, a bad setting: say it, plainly
        raise SystemExit(f"opendub api: {e.message}") from e
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")


if __name__ == "__main__":
    main()
