#!/usr/bin/env bash
# GPU checks of issue 21 item 3, in ONE call on a lent GPU machine (docs/performance.md § GPU).
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # HERE, before the call: the Python packages the GPU machine lacks
#                                                 # (polars, dagster-pipes; zarr if the 64 MiB transfer allows) -> .whl/
#   bash benchmarks/gpu_check.sh                  # THERE (device tool: carry [".whl"], timeout_s 560): every part
#   bash benchmarks/gpu_check.sh --smoke          # anywhere, on the CPU at tiny sizes (checks the plumbing)
#
# Options: --out DIR (default $OUT, else ./gpu_check_out), --device auto|cuda|cuda:N|cpu, --parts "oracle selection".
# Each part runs in its own process under `timeout` with its own budget (GPU_CHECK_BUDGET_<PART>, seconds), so a
# part that fails, hangs or runs long is recorded as such and the next part still gets its time. The budgets add up
# to about 7.5 minutes. Results: $OUT/gpu_check.md (table), gpu_check.json (every figure), gpu_figures.json (per-asset
# rates that end_to_end.py reads), end_to_end_gpu.json (if end_to_end.py ran) and gpu_check.log (all output).
# The GPU machine has PyTorch, transformers, numpy, safetensors and pyarrow but no internet; the repository's own
# venv (.venv, a link to 2.8 GB) cannot travel, so it runs `python3` there plus the wheels from .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-$PWD/gpu_check_out}
DEVICE=auto
SMOKE=""
PARTS="embeddings oracle selection torchrun end_to_end"
FETCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --parts) PARTS=$2; shift 2 ;;
    --smoke) SMOKE=--smoke; shift ;;
    --fetch-wheels) FETCH=1; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

WHEELS=${GPU_CHECK_WHEELS:-.whl}  # the wheelhouse (tests point it elsewhere)
TRANSFER_LIMIT_MIB=62  # the device tool moves at most 64 MiB (working tree + carried paths); keep a margin

fetch_wheels() {
  # cp312 manylinux wheels, no dependencies: the GPU machine has the rest (docs/performance.md § GPU).
  local py=${PYTHON:-.venv/bin/python}
  version() { "$py" -c "import importlib.metadata as m; print('==' + m.version('$1'))" 2>/dev/null; }
  download() {
    local dir=$1
    shift
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d "$dir" "$@"
  }
  mkdir -p "$WHEELS/optional"
  download "$WHEELS" "polars$(version polars)" "polars-runtime-32$(version polars-runtime-32)" \
    "dagster-pipes$(version dagster-pipes)" || return 1
  download "$WHEELS/optional" "zarr$(version zarr)" "numcodecs$(version numcodecs)" "donfig$(version donfig)" \
    "crc32c$(version crc32c)" || echo "zarr wheels not fetched: embed_documents is then not timed"
  local tree_kib wheels_kib optional_kib
  tree_kib=$( (git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- | tail -1 | cut -f1) )
  wheels_kib=$(du -ck "$WHEELS"/*.whl | tail -1 | cut -f1)
  optional_kib=$(du -ck "$WHEELS"/optional/*.whl 2>/dev/null | tail -1 | cut -f1)
  if [ $(( (tree_kib + wheels_kib + ${optional_kib:-0}) / 1024 )) -le $TRANSFER_LIMIT_MIB ]; then
    mv "$WHEELS"/optional/*.whl "$WHEELS"/ 2>/dev/null
  else
    echo "zarr wheels left out: tree ${tree_kib} KiB + wheels ${wheels_kib} KiB + zarr ${optional_kib} KiB exceeds" \
         "${TRANSFER_LIMIT_MIB} MiB (embed_documents is then not timed; the core encode path still is)"
  fi
  rm -rf "$WHEELS/optional"
  echo "$WHEELS: $(ls "$WHEELS" | tr '\n' ' ')($(du -sh "$WHEELS" | cut -f1)); working tree $((tree_kib / 1024)) MiB"
  echo "on the GPU machine run: bash benchmarks/gpu_check.sh   (device tool: carry [\"$WHEELS\"], timeout_s 560)"
}

if [ -n "$FETCH" ]; then
  fetch_wheels
  exit $?
fi

budget() {  # seconds for one part; GPU_CHECK_BUDGET_<PART> overrides
  local name="GPU_CHECK_BUDGET_${1^^}"
  local default
  case "$1" in
    embeddings) default=75 ;; oracle) default=110 ;; selection) default=75 ;; torchrun) default=75 ;;
    end_to_end) default=105 ;; *) default=60 ;;
  esac
  [ -n "$SMOKE" ] && default=120
  echo "${!name:-$default}"
}

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch, polars" 2>/dev/null; then PY=.venv/bin/python
  else PY=python3; fi
fi
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

SITE=""
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  SITE=$(mktemp -d /tmp/gmates-gpu-site.XXXXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || echo "gpu_check.sh: installing $WHEELS/*.whl failed; the parts that need them will fail"
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

WORK=$(mktemp -d /tmp/gmates-gpu-check.XXXXXX)
echo "gpu_check.sh $(date -u +%FT%TZ): python $PY, device $DEVICE, parts: $PARTS ${SMOKE:+(smoke)}"
echo "load: $(uptime)"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

for part in $PARTS; do
  seconds=$(budget "$part")
  started=$(date +%s)
  timeout -k 10 "$seconds" "$PY" benchmarks/gpu_check.py --part "$part" --out "$OUT_DIR" --work "$WORK" \
    --device "$DEVICE" --budget "$seconds" $SMOKE
  rc=$?
  echo "$rc" > "$WORK/rc_$part"
  echo "-- $part: exit $rc after $(( $(date +%s) - started )) s (budget $seconds s)"
done

"$PY" benchmarks/gpu_check.py --summarize --out "$OUT_DIR" --work "$WORK" --device "$DEVICE" $SMOKE
rc=$?
rm -rf "$WORK" ${SITE:+"$SITE"}
exec 1>&- 2>&-
wait "$TEE_PID"  # the log is complete before the call returns
exit $rc
