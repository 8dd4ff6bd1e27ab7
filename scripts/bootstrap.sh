#!/usr/bin/env bash
# Creates or reuses .venv in the repo root and installs the project with its training and test
# extras. Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml requirements/*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  # torch first, pinned: the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/pip install --quiet "torch==2.13.0"
  .venv/bin/pip install --quiet -e ".[train,test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
