#!/usr/bin/env bash
# The test command: set-up (idempotent), lint, then the whole suite. Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check src tests
ruff format --check src tests
python -m pytest -q "$@"
