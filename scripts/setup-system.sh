#!/usr/bin/env bash
# Installs the system packages edgetrain uses: espeak-ng for the synthesised keyword
# data sets, python3-venv for `make`'s virtual environment. Does nothing when they are
# present. Without root or sudo it stops with one line naming the command to run.
set -euo pipefail

packages=()
command -v espeak-ng >/dev/null 2>&1 || packages+=(espeak-ng)
# Debian/Ubuntu ship venv's pip bootstrap separately.
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || packages+=(python3-venv)

if [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "edgetrain needs system packages: run 'sudo apt-get install -y ${packages[*]}' and retry" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "edgetrain needs system packages (${packages[*]}); install them with your package manager and retry" >&2
  exit 1
fi

echo "installing system packages: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
