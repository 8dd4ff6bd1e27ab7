# The two commands of the README. Both create or reuse .venv first (scripts/bootstrap.sh).
.PHONY: serve test bootstrap

bootstrap:
	./scripts/bootstrap.sh

# Runs the service on 127.0.0.1:3000; trains the default model first when none is registered.
serve: bootstrap
	.venv/bin/escalation serve

# Runs every test: unit, data, model, API (real BentoML server), shim, browser end to end.
test: bootstrap
	BENTOML_DO_NOT_TRACK=True .venv/bin/python -m pytest
