# Sourced by the PyTorch side-by-side benchmarks: sets $venv to a virtualenv with PyTorch,
# creating it on first use (a large download). Override the location with TSUKURU_TORCH_VENV.
venv="${TSUKURU_TORCH_VENV:-$HOME/.cache/tsukuru/venv-torch}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch numpy
fi
