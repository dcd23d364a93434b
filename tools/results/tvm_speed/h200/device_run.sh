#!/usr/bin/env bash
# The one device run behind tools/results/tvm_speed/h200/ (a lent machine: one H200 GPU,
# 16 CPU cores, gVisor, no network, 10 minutes a command). Run from the repo root there:
#
#     OUT=/some/dir bash tools/results/tvm_speed/h200/device_run.sh
#
# Dependencies travel as one xz'd tarball of a site-packages folder (TVM, tvm-ffi,
# onnxruntime 1.32, onnx-graphsurgeon, jsonschema, and compress-ir's own wheel) split in
# parts (TVM alone is over one call's 64 MiB): parts already on the machine in /tmp/parts
# (an earlier call) plus .dev/b/part* of this one. DRY=1 skips the unpacking and uses the
# current Python environment (a rehearsal on a host without a GPU).
#
# Steps, most wanted first, each with its own time limit inside one overall deadline
# (DEADLINE seconds, default 530), so that whatever finished comes back:
#   1. the machine (CPU model, flags, GPU);
#   2. CNNs pruned with channel-prune{ratio=0.5} and built for cuda:sm_90 with --benchmark:
#      the build's check against onnxruntime runs on the GPU, and the original is built
#      alike and timed on the GPU in the same session (dense vs pruned on one device);
#   3. the corpus transformers (both exporters' families) built for cuda:sm_90, verified;
#   4. tools/bench_tvm.py --isolate on this host's CPU at 1, 2 and 16 threads.
set -u
OUT=${OUT:?set OUT}
W=$OUT/w
mkdir -p "$W" /tmp/m
START=$(date +%s)
DEADLINE=${DEADLINE:-530}
export PYTHONUNBUFFERED=1 COMPRESS_IR_MODEL_CACHE=/tmp/cache
LOG=$OUT/log.txt

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
step() {  # step NAME SECONDS CMD...: run with min(SECONDS, time left); log rc and time
  local name=$1 want=$2; shift 2
  local t; t=$(left); [ "$want" -lt "$t" ] && t=$want
  if [ "$t" -lt 15 ]; then echo "== $name: skipped (deadline)" >>"$LOG"; return; fi
  local t0; t0=$(date +%s)
  echo "== $name (limit ${t}s)" >>"$LOG"
  timeout "$t" "$@" >>"$LOG" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - t0 ))s" >>"$LOG"
}

if [ "${DRY:-0}" != 1 ]; then
  if [ ! -d /tmp/site/tvm ]; then
    cat "$( [ -f /tmp/parts/partaa ] && echo /tmp/parts/partaa || echo .dev/a/partaa )" .dev/b/partab | xz -d -T0 | tar x -C /tmp || { echo "unpack failed" >>"$LOG"; exit 3; }
  fi
  # compress-ir itself as a wheel of this checkout, over the one in the tarball
  for w in .dev/c/*.whl; do [ -f "$w" ] && (cd /tmp/site && python3 -m zipfile -e "$OLDPWD/$w" .); done
  export PYTHONPATH=/tmp/site
fi
REPO=$(pwd)
PY=${PY:-python3}
echo "unpacked at +$(( $(date +%s) - START ))s" >>"$LOG"

{
  lscpu; nproc; nvidia-smi -L; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
  grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile' /proc/cpuinfo | sort | uniq -c
  $PY -c "import tvm, onnxruntime, onnx, numpy; print('tvm', tvm.__version__, 'ort', onnxruntime.__version__, 'onnx', onnx.__version__, 'numpy', numpy.__version__); print('cuda exists', tvm.cuda(0).exist); print('llvm cpu', tvm.get_global_func('target.llvm_get_system_cpu')())"
} >"$W/machine.txt" 2>&1

CNNS=${CNNS:-resnet18,mobilenet_v2,resnet50,efficientnet_b0}
cd /tmp  # `python -c` / `-m` from the repo root would import its compress_ir/ (no passes/)
step fixtures 60 $PY -c "
import sys; sys.path.insert(0, '$REPO/tools'); import bench_tvm, onnx
for n in '$CNNS'.split(','):
    onnx.save(bench_tvm.load_fixture(n, 0), f'/tmp/m/{n}.onnx')
"
for m in ${CNNS//,/ }; do
  step "cuda_$m" 90 $PY -m compress_ir.cli "/tmp/m/$m.onnx" --pass 'channel-prune{ratio=0.5}' \
    -o "/tmp/m/${m}_p.onnx" --target cuda:sm_90 --artifact "/tmp/m/$m.cuda" --benchmark \
    --report "$W/cuda_$m.json"
done
step cuda_transformers 150 $PY "$REPO/tools/compile_transformers.py" --targets cuda:sm_90 \
  --models "${TRANSFORMERS:-bert_ts,bert_dynamo,vit,gpt2,llama_ts,mpt}" --work /tmp/ct \
  --out "$W/cuda_transformers.md"
CPU_MODELS=${CPU_MODELS-resnet18,mobilenet_v2,resnet50,efficientnet_b0,vit_s,bert_base}
for m in ${CPU_MODELS//,/ }; do
  step "cpu_$m" 120 $PY "$REPO/tools/bench_tvm.py" --models "$m" --threads "${THREADS:-1,2,16}" \
    --repeat "${REPEAT:-6}" --isolate --block 5 --json "$W/cpu_$m.json"
done
echo "done at +$(( $(date +%s) - START ))s" >>"$LOG"
tar czf "$OUT/w.tgz" -C "$OUT" w && rm -rf "$W"
