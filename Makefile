# Two entry points (see README): `make demo` and `make test`. Both create the environment first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Node tools for the tests (glTF validator) and the source of the vendored three.js.
NODE_STAMP := node_modules/.installed
# Debian's Chromium for the browser tests (Playwright never downloads its own browser here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The vendored three.js: one tree-shaken, minified module of what tools/three-entry.js exports.
THREE_BUNDLE := llnm3d/site/vendor/three/three.bundle.min.js

.PHONY: demo test test-slow lint test-wheel figures site vendor-three clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y chromium

demo: $(STAMP)
	$(BIN)/llnm3d demo --out demo-output

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check llnm3d tests benchmarks examples
	$(BIN)/mypy

test-slow: $(STAMP) $(NODE_STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -m slow

# The wheel as a user installs it: built from the package alone, installed into a fresh virtual
# environment (which sees this one's dependencies, so torch is not installed again) and run
# outside the repository on the bundled samples. Also part of `make test-slow`.
test-wheel: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/test_wheel.py

# The published demo site (what GitHub Pages serves): a fresh demo run, its site copied to site/.
# tests/test_published_site.py fails when site/ was built by other code than the current.
site: $(STAMP)
	rm -rf build/demo-site
	$(BIN)/llnm3d demo --out build/demo-site
	rm -rf site
	cp -r build/demo-site/site site

figures: $(STAMP) $(CHROMIUM)
	$(BIN)/python examples/make_figures.py docs

# Refresh llnm3d/site/vendor/three from the npm package pinned in package.json: its licence as
# is, and the part of three.js the viewer uses (tools/three-entry.js) bundled by the pinned
# esbuild into one tree-shaken, minified ES module, licence comments kept.
vendor-three: $(NODE_STAMP)
	rm -rf llnm3d/site/vendor/three
	mkdir -p llnm3d/site/vendor/three
	cp node_modules/three/LICENSE llnm3d/site/vendor/three/LICENSE
	node_modules/.bin/esbuild tools/three-entry.js --bundle --format=esm --minify \
		--legal-comments=inline --log-level=warning --outfile=$(THREE_BUNDLE)

clean:
	rm -rf $(VENV) node_modules demo-output .pytest_cache
