#!/bin/bash
# device_run.sh - the one GPU-machine call that produced config/model:
#   a --dry-run of train_default.py (every stage, tiny sizes), then the real
#   training, both bounded by one wall-clock deadline (BUDGET seconds from the
#   start, default 560, for a 600 s call). Needs tests/train/data/ (from
#   tests/train/prepare_data.sh) and $OUT; the model folder comes back as
#   $OUT/model.tar.part-* (reassemble: cat model.tar.part-* | tar -xf -),
#   with train_report.json, dry.log and train.log beside it.
#   Extra arguments go to the real run.
set -u
: "${OUT:?set OUT to the folder that receives the results}"
export PYTHONUNBUFFERED=1
start=$(date +%s)
deadline=$((start + ${BUDGET:-560}))
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader || true

python3 tests/train/train_default.py --dry-run --out /tmp/capmoe-dry --deadline "$deadline" \
  >"$OUT/dry.log" 2>&1
rc=$?
tail -n 30 "$OUT/dry.log"
echo "dry run: rc=$rc after $(( $(date +%s) - start )) s"
# 0 = all checks passed, 3 = finished with a failed check (still worth the real run)
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  exit "$rc"
fi

python3 tests/train/train_default.py --out /tmp/capmoe-model --deadline "$deadline" "$@" 2>&1 \
  | tee "$OUT/train.log"
rc=${PIPESTATUS[0]}
cp /tmp/capmoe-model/train_report.json "$OUT/" 2>/dev/null
if [ -f /tmp/capmoe-model/model.safetensors ]; then
  (cd /tmp/capmoe-model && tar -cf - .) | split -b 15m - "$OUT/model.tar.part-"
fi
ls -la "$OUT"
echo "real run: rc=$rc after $(( $(date +%s) - start )) s"
exit "$rc"
