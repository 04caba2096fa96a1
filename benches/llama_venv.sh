# Sourced by the llama.cpp side-by-side benchmark: sets $llama_venv to a virtualenv with the
# `llama-cpp-python` package from PyPI with its OpenAI-compatible server, which compiles llama.cpp
# for this machine on first use (several minutes; a C++ compiler is needed). Override the location
# with TSUKURU_LLAMA_VENV.
llama_venv="${TSUKURU_LLAMA_VENV:-$HOME/.cache/tsukuru/venv-llama}"
if [ ! -x "$llama_venv/bin/python" ] || ! "$llama_venv/bin/python" -c "import llama_cpp, uvicorn, fastapi, sse_starlette" 2>/dev/null; then
  [ -x "$llama_venv/bin/python" ] || python3 -m venv "$llama_venv"
  # Native CPU kernels (AVX2/FMA where the machine has them), no GPU back end.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" \
    "$llama_venv/bin/pip" install --quiet --disable-pip-version-check numpy "llama-cpp-python[server]"
fi
