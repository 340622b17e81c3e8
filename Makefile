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
THREE_FILES := LICENSE build/three.module.js build/three.core.js \
	examples/jsm/loaders/GLTFLoader.js examples/jsm/controls/OrbitControls.js \
	examples/jsm/utils/BufferGeometryUtils.js examples/jsm/utils/SkeletonUtils.js

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
	$(BIN)/ruff check llnm3d tests benchmarks
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

figures: $(STAMP)
	$(BIN)/python examples/make_figures.py docs

# Refresh llnm3d/site/vendor/three from the npm package pinned in package.json: the licence as
# is, each module minified by esbuild (pinned there too) with its licence comment kept. Files
# stay separate ES modules with their own imports; nothing is bundled.
vendor-three: $(NODE_STAMP)
	rm -rf llnm3d/site/vendor/three
	for f in $(THREE_FILES); do \
		mkdir -p llnm3d/site/vendor/three/$$(dirname $$f) && \
		case $$f in \
		*.js) node_modules/.bin/esbuild node_modules/three/$$f --minify \
			--legal-comments=inline --log-level=warning \
			--outfile=llnm3d/site/vendor/three/$$f ;; \
		*) cp node_modules/three/$$f llnm3d/site/vendor/three/$$f ;; \
		esac || exit 1; done

clean:
	rm -rf $(VENV) node_modules demo-output .pytest_cache
