#!/bin/sh
# Create the converter environment envs/NAME/.venv from envs/NAME/requirements.txt (every
# version pinned), then install bnspec itself into it without dependencies, so that the worker
# (`python -m bnspec.worker module:attr`) imports this checkout's bnspec and adapters.
# Usage: sh envs/create.sh NAME [PYTHON]   (run from the repository root; sequential installs)
set -eu
name="$1"
python="${2:-python3}"
dir="envs/$name"
venv="$dir/.venv"
pip="$venv/bin/python -m pip install --quiet --disable-pip-version-check"
test -f "$dir/requirements.txt"
if test -f "$dir/python-version"; then
  # a converter that needs another Python (onnx2tf 2.x: >= 3.12): pythonX.Y on PATH, else pyenv's
  want="$(tr -d ' \n' < "$dir/python-version")"
  python="$(command -v "python$want" 2>/dev/null || true)"
  if test -z "$python" || ! "$python" -c "" 2>/dev/null; then
    python="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/"python$want" 2>/dev/null | tail -n 1)"
  fi
  test -n "$python" || { echo "envs/$name needs Python $want (none found)" >&2; exit 1; }
fi
test -x "$venv/bin/python" || "$python" -m venv "$venv"
if test -f "$dir/requirements.lock.txt"; then
  # every transitive version as measured (pip freeze of the environment the findings came from)
  $pip -r "$dir/requirements.txt" -c "$dir/requirements.lock.txt"
else
  $pip -r "$dir/requirements.txt"
fi
if test -f "$dir/requirements.nodeps.txt"; then
  # packages whose metadata names a distribution the environment replaces (tf-keras -> the
  # full `tensorflow`, where tensorflow-cpu is installed): installed without dependencies
  $pip --no-deps -r "$dir/requirements.nodeps.txt"
fi
$pip --no-deps -e .
if test -f "$dir/check.py"; then "$venv/bin/python" "$dir/check.py"; fi
touch "$venv/.bnspec-setup"
