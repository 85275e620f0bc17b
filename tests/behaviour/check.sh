#!/usr/bin/env bash
# Fails when what the learner computes has changed: reruns record.sh and
# compares every predictions file with tests/behaviour/predictions.sha256.
#
#   tests/behaviour/check.sh RECSTREAM_BINARY
#
# A deliberate change of the learner's results updates the hashes
# (record.sh BIN DIR > tests/behaviour/predictions.sha256) in the same
# commit, with the eval figures that justify it in EVAL.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$here/record.sh" "$1" "$work" >"$work/got.sha256"
if ! diff -u "$here/predictions.sha256" "$work/got.sha256"; then
  echo "behaviour_test: FAILED: predictions differ from tests/behaviour/predictions.sha256 (- expected, + got)"
  exit 1
fi
echo "behaviour_test: $(wc -l <"$work/got.sha256") predictions files byte-identical"
