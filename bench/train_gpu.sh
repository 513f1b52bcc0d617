#!/usr/bin/env bash
# phi1_small and phi1 on the GPUs of this machine: 30 measured steps each after 5 warm-up
# steps, bf16, synthetic-free (a small packed corpus from this Python's own sources, 2048-token
# windows, cycled). Prints tokens/s per GPU and MFU from metrics.jsonl (target on H100: phi1
# MFU ≥ 50%). Budget: under 8 minutes on one H100.
#
#   bash bench/train_gpu.sh                 # all GPUs of this machine
#   NGPU=1 bash bench/train_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
WORK=${WORK:-$(mktemp -d)}
WARMUP=5
STEPS=$((WARMUP + 30))
ATTN=${ATTN:-auto}   # flash_attention_2 when flash-attn (extra `gpu`) is installed, else sdpa

# 1) a corpus: the standard library's sources, packed into 2048-token windows (offline BPE
#    sized like codegen's vocabulary is not needed for throughput: vocab 51200 is fixed)
$PY - "$WORK" <<'PYEOF'
import os, sys
from pathlib import Path
from primer.datasets import Producer, write_dataset
from model.packing import Source, pack
work = Path(sys.argv[1])
files = sorted(Path(os.__file__).parent.rglob("*.py"))[:3000]
write_dataset(str(work / "text"), ({"text": p.read_text(errors="replace")} for p in files),
              Producer("bench"), overwrite=True)
if __name__ == "__main__":
    pack([Source(str(work / "text"))], str(work / "packed"), tokenizer="train",
         tokenizer_vocab=8192, seq_len=2048, workers=8)
PYEOF

run() {  # preset micro_batch extra-args...
  local preset=$1 micro=$2; shift 2
  local out="$WORK/run-$preset"
  rm -rf "$out"
  "$TORCHRUN" --nproc-per-node "$NGPU" --master-port 29517 -m model.train \
    --preset "$preset" --data "$WORK/packed" --output "$out" --steps "$STEPS" \
    --model.vocab_size=51200 --model.attention="$ATTN" --train.precision=bf16 \
    --train.micro_batch="$micro" --train.global_batch=$((micro * NGPU)) \
    --checkpoint.every=0 --checkpoint.resume= --optim.warmup_steps=10 "$@" >"$out.log" 2>&1 \
    || { tail -30 "$out.log"; exit 1; }
  $PY - "$out/metrics.jsonl" "$preset" "$WARMUP" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[3]):]
tps = statistics.median(r["tokens_per_s_per_device"] for r in rows)
mfu = statistics.median(r["mfu"] for r in rows) if rows[0]["mfu"] is not None else None
print(json.dumps({"preset": sys.argv[2], "steps_measured": len(rows),
                  "tokens_per_s_per_gpu": round(tps),
                  "mfu": None if mfu is None else round(mfu, 3),
                  "final_loss": round(rows[-1]["loss"], 3)}))
PYEOF
}

# micro-batches sized for 80 GB; phi1 shards with FSDP2 when NGPU > 1 (its preset's choice)
run phi1_small 16 --parallel.compile=true
run phi1 8 --parallel.compile=true
