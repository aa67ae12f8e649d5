#!/usr/bin/env bash
# The GPU suite (see benchmarks/gpu_suite.py): bash benchmarks/gpu_suite.sh [OUT] [--budget 480] [--dry-run]
#
# Runs gpu_suite.py with the first Python whose torch sees a CUDA device: $PYTHON, ./.venv/bin/python,
# python3, python; for --dry-run, any of them with torch.
set -euo pipefail
cd "$(dirname "$0")/.."
want="import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
case " $* " in *" --dry-run "*) want="import torch" ;; esac
for candidate in "${PYTHON:-}" .venv/bin/python python3 python; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$want" >/dev/null 2>&1; then
        exec "$candidate" benchmarks/gpu_suite.py "$@"
    fi
done
echo "gpu_suite.sh: no Python here imports a torch that sees a CUDA device;" \
    "set PYTHON=/path/to/python, or install a CUDA build of torch into .venv" >&2
exit 2
