#!/usr/bin/env bash
# The main job: set-up (idempotent), train a small DDNN on Fashion-MNIST, print its report.
# EPOCHS (default 4) and OUT (default runs/main) can be set in the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="${OUT:-runs/main}"
rm -rf "$out"
ddnn train ddnn --dataset fashion-mnist --epochs "${EPOCHS:-4}" --out "$out"
echo
ddnn evaluate "$out"
