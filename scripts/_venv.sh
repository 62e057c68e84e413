# Sourced by scripts/test and scripts/bench: make $VENV (default .venv) with
# $PYTHON (default python3) on first use and install the project into it,
# editable, with the extra named $EXTRA. Later runs reuse it, and reinstall
# only when pyproject.toml changed, so a repeat run needs no package index.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: PYTHON=$PYTHON not found; set PYTHON to a Python 3.10+ interpreter" >&2
    exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "--- creating $VENV with $PYTHON (Python $(py_version "$PYTHON"))" >&2
    "$PYTHON" -m venv "$VENV"
elif [[ "$(py_version "$VENV/bin/python")" != "$(py_version "$PYTHON")" ]]; then
    echo "error: $VENV holds Python $(py_version "$VENV/bin/python") but PYTHON=$PYTHON is" \
        "Python $(py_version "$PYTHON"): delete $VENV, or set VENV to another directory" >&2
    exit 1
fi
stamp="$VENV/.subproc_executor-$EXTRA.stamp"
digest="compat-$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)"
if [[ ! -f "$stamp" || "$(<"$stamp")" != "$digest" ]]; then
    echo "--- installing .[$EXTRA] into $VENV" >&2
    # compat: a .pth line naming this directory, the way a wheel's files are
    # found. setuptools' default editable install adds an import hook instead,
    # whose own imports (pathlib, importlib.util, ...) cost every interpreter
    # this venv starts ~30 ms (`python -c pass`: 48 against 19 ms here): every
    # sidecar and every stdlib spawn worker would pay it in the timings.
    "$VENV/bin/python" -m pip install --quiet --editable ".[$EXTRA]" --config-settings editable_mode=compat
    echo "$digest" >"$stamp"
fi
