#!/bin/sh
# Install torch into the Python given as $1, without pulling a multi-gigabyte CUDA build
# onto a machine that has no NVIDIA GPU.
#
#   1. torch already importable            -> nothing to do
#   2. a torch wheel already on this machine (pip's configured find-links, e.g. a local
#      wheel cache or mirror)              -> install that one, no download
#   3. Linux with no NVIDIA driver         -> the CPU-only build from PyTorch's CPU index
#   4. anything else (GPU box, macOS, ...) -> the normal `pip install torch`
#
# Override with TORCH_SPEC (default "torch") or TORCH_CPU_INDEX.
set -eu
PY="$1"
SPEC="${TORCH_SPEC:-torch}"
CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if "$PY" -c 'import torch' 2>/dev/null; then
    exit 0
fi
# --no-index: only local wheels are considered, so this fails at once when there are none.
if "$PY" -m pip install --quiet --no-index --no-deps "$SPEC" 2>/dev/null; then
    exec "$PY" -m pip install --quiet "$SPEC"  # torch's own dependencies, from the index
fi
if [ "$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    # Only the CPU index is added: pip keeps its own default index for everything else, and
    # prefers the CPU index's "+cpu" build of the same torch version.
    exec "$PY" -m pip install --quiet "$SPEC" --extra-index-url "$CPU_INDEX"
fi
exec "$PY" -m pip install --quiet "$SPEC"
