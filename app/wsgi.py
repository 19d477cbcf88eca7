"""The WSGI entry point: ``gunicorn -c app/gunicorn_conf.py app.wsgi:app``."""

from app import create_app

app = create_app()
