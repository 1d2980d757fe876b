#!/usr/bin/env bash
# The main job: set-up (idempotent); train a small DDNN on Fashion-MNIST (short schedule); print
# its evaluation; then run it split across emulated devices and a server over a real Mosquitto
# broker (separate processes) and print the deployment report for both configurations.
# EPOCHS (3), DEVICES (4), SAMPLES (400) and OUT (runs/main) can be set in the environment.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out="${OUT:-runs/main}"
rm -rf "$out"
ddnn train ddnn --dataset fashion-mnist --epochs "${EPOCHS:-3}" --out "$out"
echo
ddnn evaluate "$out"
echo
ddnn run "$out" --devices "${DEVICES:-4}" --samples "${SAMPLES:-400}" --mode both
