"""Load tests against a lab host: run them as modules from the repository root (`python -m loadtests.bench`)."""
