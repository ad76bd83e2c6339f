# Sourced by the other scripts: where distill keeps its venv and assets, and how tch finds libtorch.
# DISTILL_HOME (default ~/.cache/distill) holds venv/ (torch==2.11.0 and the Python reference tools)
# and assets/ (models and data sets fetched from package registries).
export DISTILL_HOME="${DISTILL_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}"
export DISTILL_VENV="$DISTILL_HOME/venv"
export VIRTUAL_ENV="$DISTILL_VENV"
export PATH="$DISTILL_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export DISTILL_PYTHON="$DISTILL_VENV/bin/python"
