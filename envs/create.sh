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
if ! test -x "$venv/bin/python" && test -f "$dir/seed"; then
  # Start from a sibling environment that already holds the largest pins (envs/nobuco from
  # envs/torchvision: the same torch 2.14.1 CUDA build, 5 GB) as hard links, not a second copy;
  # pip then changes what differs and the prune below removes what the lock does not name.
  # Installs replace files and never write into them, so the two stay independent.
  seed="envs/$(tr -d ' \n' < "$dir/seed")/.venv"
  if test -f "$seed/.bnspec-setup"; then
    cp -al "$seed" "$venv"
    rm -f "$venv/.bnspec-setup"
    # the venv's scripts and pyvenv.cfg name its own path (sed -i writes a new file: links break)
    grep -rlI -- "$PWD/$seed" "$venv/bin" "$venv/pyvenv.cfg" | while read -r f; do
      sed -i "s#$PWD/$seed#$PWD/$venv#g" "$f"
    done
    echo "envs/$name: seeded from $seed (hard links)"
  fi
fi
# The environment holds what its files name and nothing else (a seed's extras, or a pin dropped
# from requirements.txt since the last set-up).
prune() {
  extra="$("$venv/bin/python" - "$dir" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
keep = {"bnspec", "pip", "setuptools", "wheel"}
for f in pathlib.Path(sys.argv[1]).glob("requirements*.txt"):
    for line in f.read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if m:
            keep.add(norm(m.group(1)))
print(" ".join(sorted({d.metadata["Name"] for d in md.distributions() if norm(d.metadata["Name"]) not in keep})))
EOF
)"
  if test -n "$extra"; then
    echo "envs/$name: removing what its requirements do not name: $extra"
    "$venv/bin/python" -m pip uninstall --quiet --yes $extra
  fi
}
test -x "$venv/bin/python" || "$python" -m venv "$venv"
prune
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
prune
# Files identical to another environment's become hard links (envs/dedupe.py says why).
python3 envs/dedupe.py "$venv" .venv .venv-unit envs/*/.venv
if test -f "$dir/check.py"; then "$venv/bin/python" "$dir/check.py"; fi
touch "$venv/.bnspec-setup"
