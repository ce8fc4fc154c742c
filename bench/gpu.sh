#!/usr/bin/env bash
# bench/gpu.py on the lent GPU machine, from the repository root of a copy of the tree:
#   bash bench/gpu.sh               (about 7 minutes; results in $OUT)
#   bash bench/gpu.sh --only vocab  (a short rerun of some sections)
# charrnn is not installed there: PYTHONPATH points at this tree. PYTHON picks the
# interpreter (python3 by default; here: PYTHON=.venv/bin/python bash bench/gpu.sh --dry-run).
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"${PYTHON:-python3}" bench/gpu.py "$@" 2>&1 | tee -a "$OUT/console.txt"
exit "${PIPESTATUS[0]}"
