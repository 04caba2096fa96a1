#!/usr/bin/env bash
# Regenerates the PyTorch parity fixture (crates/model/tests/fixtures/torch_parity.json) that
# crates/model/tests/torch_parity.rs checks tsukuru's logits and gradients against.
# PyTorch comes from the benchmarks' cached virtualenv (created on first use; a large download).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/torch_venv.sh
"$venv/bin/python" scripts/torch_parity.py > crates/model/tests/fixtures/torch_parity.json
echo "wrote crates/model/tests/fixtures/torch_parity.json"
