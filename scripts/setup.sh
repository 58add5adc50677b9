#!/usr/bin/env bash
# Set up this checkout on a fresh machine: the package with its test tools (pip, editable), and — as root, where
# apt-get exists — the Debian packages the metrics and tests use: wordnet-base (WordNet 3.0, METEOR's synonyms)
# and chromium (the browser tests drive it through Playwright).
# Without root it says which Debian packages are missing instead. Python: $PYTHON, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" -m pip install -q -e ".[dev]"

DEBIAN_PACKAGES=(wordnet-base chromium)
missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: as root, install the Debian packages the full test suite needs: apt-get install ${missing[*]}" >&2
  fi
fi
