# Sourced by benches/serve.sh after benches/llama_venv.sh: sets $llama_server to llama.cpp's own
# C++ OpenAI-compatible server (`llama-server`, continuous batching over parallel slots). PyPI has
# no build of it, so on first use it is compiled from the llama.cpp sources vendored in the
# `llama-cpp-python` source package of the release the Python peer runs (fetched with pip; CMake
# from PyPI too), native CPU kernels, no GPU back end: several minutes on two cores. Cached under
# TSUKURU_LLAMA_SERVER_DIR.
llama_server_dir="${TSUKURU_LLAMA_SERVER_DIR:-$HOME/.cache/tsukuru/llama-server}"
llama_server="$llama_server_dir/build/bin/llama-server"
if [ ! -x "$llama_server" ]; then
  mkdir -p "$llama_server_dir"
  tools="$llama_server_dir/tools"
  if [ ! -x "$tools/bin/cmake" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check scikit-build-core cmake
  fi
  version=$("$llama_venv/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")
  src="$llama_server_dir/llama_cpp_python-$version/vendor/llama.cpp"
  if [ ! -d "$src" ]; then
    "$tools/bin/pip" download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
      --no-build-isolation "llama-cpp-python==$version" -d "$llama_server_dir"
    tar xzf "$llama_server_dir/llama_cpp_python-$version.tar.gz" -C "$llama_server_dir" \
      "llama_cpp_python-$version/vendor/llama.cpp"
  fi
  "$tools/bin/cmake" -S "$src" -B "$llama_server_dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON > "$llama_server_dir/cmake.log"
  "$tools/bin/cmake" --build "$llama_server_dir/build" --target llama-server -j "$(nproc)" > "$llama_server_dir/build.log"
fi
