#!/usr/bin/env bash
# Usage: bash .ci/env.sh COMMAND [ARGS...]
#
# Makes sure ebmcompose and everything it needs is installed, then runs COMMAND in that
# environment. Idempotent: the install runs once and again only when pyproject.toml changes.
#
# Which Python environment:
#   - an active virtualenv or conda env ($VIRTUAL_ENV / $CONDA_PREFIX) is used as it is;
#   - otherwise ./.venv is created (python3 -m venv) and used.
# Which torch:
#   - a torch already installed in that environment is kept (bring your own CUDA/ROCm build);
#   - else $EBMCOMPOSE_TORCH (a pip requirement, e.g. "torch==2.13.0") if set;
#   - else, on a machine without an NVIDIA GPU, the CPU build pinned in .ci/constraints-cpu.txt
#     (so pip never downloads the multi-GB CUDA wheels), and on a machine with one, pip's default.
# The installed torch is then pinned while the package's other dependencies install, so nothing
# replaces it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ]; then
  py="$CONDA_PREFIX/bin/python"
else
  if [ ! -x "$root/.venv/bin/python" ]; then
    echo "[ebmcompose] creating $root/.venv" >&2
    "${PYTHON:-python3}" -m venv "$root/.venv"
  fi
  py="$root/.venv/bin/python"
  export VIRTUAL_ENV="$root/.venv"
  export PATH="$root/.venv/bin:$PATH"
fi

envdir="$("$py" -c 'import sys; print(sys.prefix)')"
stamp="$envdir/.ebmcompose-installed"
want="$(cat "$root/pyproject.toml" "$root/.ci/constraints-cpu.txt" "$root/.ci/env.sh" | cksum) $root"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  pip=("$py" -m pip install --disable-pip-version-check -q)
  if ! "$py" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${EBMCOMPOSE_TORCH:-}" ]; then
      echo "[ebmcompose] installing $EBMCOMPOSE_TORCH" >&2
      "${pip[@]}" "$EBMCOMPOSE_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "[ebmcompose] NVIDIA GPU found: installing pip's default torch build" >&2
      "${pip[@]}" torch
    else
      echo "[ebmcompose] no GPU: installing the CPU build of torch (.ci/constraints-cpu.txt)" >&2
      "${pip[@]}" -r "$root/.ci/constraints-cpu.txt"
    fi
  fi
  tv="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
  cons="$(mktemp)"
  trap 'rm -f "$cons"' EXIT
  echo "torch==$tv" >"$cons"
  echo "[ebmcompose] installing ebmcompose (editable) with torch $tv kept" >&2
  "${pip[@]}" -c "$cons" -e "$root[dev]"
  echo "$want" >"$stamp"
fi

if [ "$#" -eq 0 ]; then
  echo "[ebmcompose] environment ready: $envdir" >&2
  exit 0
fi
cd "$root"
exec "$@"
