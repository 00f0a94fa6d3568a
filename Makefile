# Set-up and everyday commands. `make run` and `make test` each do the whole set-up first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean install-desktop uninstall-desktop

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lmstudio

test: $(STAMP) lint
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Style and layering: ruff (pyproject's [tool.ruff]) and the import-linter contracts.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py

clean:
	rm -rf $(VENV) build *.egg-info

# The app in the desktop's menu: a .desktop entry and the icon, for this user (no root needed).
# EXEC is the command the entry runs: this checkout's venv by default; after `pipx install .`
# use `make install-desktop EXEC=lmstudio`.
XDG_DATA_HOME ?= $(HOME)/.local/share
DESKTOP_DIR ?= $(XDG_DATA_HOME)/applications
ICON_DIR ?= $(XDG_DATA_HOME)/icons/hicolor
EXEC ?= $(abspath $(BIN))/lmstudio

install-desktop:
	mkdir -p "$(DESKTOP_DIR)" "$(ICON_DIR)/scalable/apps" "$(ICON_DIR)/256x256/apps"
	cp resources/lmstudio.svg "$(ICON_DIR)/scalable/apps/lmstudio.svg"
	cp resources/lmstudio.png "$(ICON_DIR)/256x256/apps/lmstudio.png"
	sed 's|^Exec=lmstudio|Exec=$(EXEC)|; s|^TryExec=lmstudio|TryExec=$(EXEC)|' packaging/lmstudio.desktop > "$(DESKTOP_DIR)/lmstudio.desktop"
	-update-desktop-database "$(DESKTOP_DIR)" 2>/dev/null
	-gtk-update-icon-cache -q -t "$(ICON_DIR)" 2>/dev/null
	@echo "installed $(DESKTOP_DIR)/lmstudio.desktop (runs $(EXEC))"

uninstall-desktop:
	rm -f "$(DESKTOP_DIR)/lmstudio.desktop" "$(ICON_DIR)/scalable/apps/lmstudio.svg" "$(ICON_DIR)/256x256/apps/lmstudio.png"
