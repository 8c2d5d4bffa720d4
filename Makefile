# `make demo` and `make test` each set up a fresh machine first (a virtualenv in .venv).
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/pip install -r requirements.txt -r requirements-dev.txt -c constraints.txt

.PHONY: setup demo test lint

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(PIP_INSTALL)
	$(BIN)/pip install --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	. $(BIN)/activate && dvc repro && echo && cat reports/table.md && echo && \
	echo "MLflow UI: . $(BIN)/activate && mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)"

lint: setup
	$(BIN)/ruff check .

test: lint
	. $(BIN)/activate && pytest
