#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, then a virtual environment with
# torch (CPU build, pinned) and ddnn with its dev extras. Sourced by main.sh and test.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
# the device C is also checked for Raspberry Pi OS 64-bit: cross compiler and user-mode qemu
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# libmosquitto: the C device agent (headers) and the compiled MQTT transport (the library)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
# ... and the arm64 library for the cross-compiled agent, from Debian multiarch
if [ ! -f /usr/lib/aarch64-linux-gnu/libmosquitto.so ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo_cmd dpkg --add-architecture arm64
  need+=(libmosquitto-dev:arm64)
fi
command -v tc >/dev/null && command -v ip >/dev/null || need+=(iproute2)  # emulated links
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
# mosquitto's package may start a system broker on port 1883; ddnn starts its own on a free port
# and never needs that one.

venv="${DDNN_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.ddnn-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "setup: installing Python packages into $venv" >&2
  # torch first and pinned: a range admitting a newer release would fetch a multi-GB CUDA build
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[dev]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
