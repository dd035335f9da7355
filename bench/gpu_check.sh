#!/usr/bin/env bash
# One command that checks MT-Color's speed and memory on a GPU (under 8 minutes on one H100/H200):
#   1. plain SD+ControlNet (diffusers pipeline) vs MT-Color with 0/1/2/4/8 instances, trained-like
#      modules, SD 1.5-size random weights, 512x512, the default profile's 20 steps: s/image, ratios,
#      peak torch memory (default profile: branch_crop 64); then 4 instances with dense reference
#      attention and with branch_crop 0 (the paper's whole-image branches);
#   2. region attention at 64x64 tokens: dense mask vs per-region SDPA vs FlexAttention;
#   3. end-to-end `mtcolor-batch run` on a 1.2 MP, a 24 MP 16-bit and a ~100 MP scan with a
#      full-size random bundle written here (SD 1.5, SAM ViT-B, OWLv2-base shapes; nothing downloaded):
#      s/image, peak torch memory and nvidia-smi samples.
#
#   bench/gpu_check.sh                 # on the GPU machine, from the repository root or anywhere
#   bench/gpu_check.sh --small         # the same on CPU at reduced size (tiny bundle), 2-3 minutes
#   bench/gpu_check.sh --workdir DIR   # where the bundle and scans go (default: $TMPDIR/mtcolor-gpu-check)
#   EXTRA="--compile" bench/gpu_check.sh   # pass engine options to both benchmarks
set -uo pipefail  # no -e: a failing section is reported and the next one still runs
cd "$(dirname "$0")/.."

SMALL=0
WORK="${TMPDIR:-/tmp}/mtcolor-gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --small) SMALL=1 ;;
    --workdir) WORK="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --small, --workdir DIR)" >&2; exit 2 ;;
  esac
  shift
done
EXTRA="${EXTRA:-}"
PY="${PYTHON:-python}"
mkdir -p "$WORK"
start=$(date +%s)

if [ "$SMALL" = 1 ]; then
  DEV=cpu
  STEP_ARGS=(--size 256 --steps 5 --repeats 1 --warmup 1)
  ATTN_ARGS=(--device cpu --dtype float32 --impls dense,sparse --side 32 --channels 64 --repeats 2)
  E2E_ARGS=(--small --device cpu --steps 3 --profile fast)
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device here; use --small for the CPU check" >&2
    exit 2
  fi
  DEV=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  STEP_ARGS=(--full-size --dtype float16 --repeats 2 --warmup 1)
  ATTN_ARGS=(--device cuda --dtype float16 --impls dense,sparse,flex --batch 10)
  E2E_ARGS=(--device cuda)
fi
"$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)"

failed=()
quiet() { grep -v -e "should be kept in float32" -e "requires torchvision" -e "Loading weights" -e "Writing model"; }

echo; echo "== 1/3 plain SD+ControlNet vs MT-Color (trained-like modules), 0/1/2/4/8 instances"
# shellcheck disable=SC2086
"$PY" bench/model_step.py --device "$DEV" --modules trained --instances 0,1,2,4,8 "${STEP_ARGS[@]}" $EXTRA 2>&1 \
  | quiet || failed+=("1 model_step")
echo; echo "== 1b/3 the switches at 4 instances: dense reference attention, then branch_crop 0 (paper)"
# shellcheck disable=SC2086
"$PY" bench/model_step.py --device "$DEV" --modules trained --instances 4 --attention dense "${STEP_ARGS[@]}" \
  $EXTRA 2>&1 | quiet | tail -4 || failed+=("1b attention dense")
# shellcheck disable=SC2086
"$PY" bench/model_step.py --device "$DEV" --modules trained --instances 4 --branch-crop 0 "${STEP_ARGS[@]}" \
  $EXTRA 2>&1 | quiet | tail -4 || failed+=("1b branch_crop")

echo; echo "== 2/3 region attention: dense mask vs region-sparse"
"$PY" bench/region_attention.py "${ATTN_ARGS[@]}" 2>&1 \
  | grep -v -e "flex_attention called without" -e "^ *$" -e "SOLUTION\|debug your\|print statements\|_warn_once\|FLEX_ATTENTION_DISABLE" \
  || failed+=("2 region_attention")

echo; echo "== 3/3 end-to-end mtcolor-batch run (1.2 MP, 24 MP 16-bit, ~100 MP; --small: 0.3/2/6 MP)"
"$PY" bench/e2e_run.py --workdir "$WORK" "${E2E_ARGS[@]}" --extra "$EXTRA" 2>&1 \
  | quiet | grep -v -e "━" -e "┃" -e "│" -e "┏" -e "┡" -e "└" -e "Summary" || failed+=("3 e2e_run")

echo; echo "gpu_check done in $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED sections: ${failed[*]}" >&2
  exit 1
fi
