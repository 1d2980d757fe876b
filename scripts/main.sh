#!/usr/bin/env bash
# The main job: set-up (idempotent); train a small DDNN on Fashion-MNIST (short schedule), which
# prints its evaluation (the `ddnn evaluate` table); then run it split across emulated devices and
# a server over a real Mosquitto broker (separate processes) and print the deployment report for
# both configurations. A run already in OUT is replaced (--overwrite deletes only ddnn's files).
# EPOCHS (3), DEVICES (4), SAMPLES (400) and OUT (runs/main) can be set in the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="${OUT:-runs/main}"
ddnn train ddnn --dataset fashion-mnist --epochs "${EPOCHS:-3}" --out "$out" --overwrite
echo
ddnn run "$out" --devices "${DEVICES:-4}" --samples "${SAMPLES:-400}" --mode both
