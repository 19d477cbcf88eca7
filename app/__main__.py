"""``python -m app``: the Flask development server (make dev). Not for production."""

from app import create_app
from app.config import get_settings

if __name__ == "__main__":
    host, _, port = get_settings().bind.rpartition(":")
    create_app().run(host=host or "127.0.0.1", port=int(port), threaded=True)
