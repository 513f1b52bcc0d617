"""Primer's training loop vs Hugging Face ``Trainer`` on CPU: the same ``tiny`` phi model
(same initial weights), the same packed windows in the same order, the same batch (16
sequences as 2 accumulated micro-batches of 8), AdamW with the same settings, fp32, in one run.

    .venv/bin/python bench/train_cpu.py            # 40 steps each (~1-2 minutes on 2 cores)
    .venv/bin/python bench/train_cpu.py --steps 20

Reports the median tokens/s over the steps after warm-up and the ratio (target ≥ 1.2×).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def corpus(tmp: Path) -> str:
    import os

    from primer.datasets import Producer, write_dataset

    lib = Path(os.__file__).parent
    files = sorted(lib.glob("*.py"))[:60]
    uri = str(tmp / "text")
    write_dataset(uri, ({"text": p.read_text(errors="replace")} for p in files), Producer("b"))
    return uri


def primer_run(cfg) -> tuple[list[float], object]:
    from model.trainer import Trainer

    trainer = Trainer(cfg)
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        trainer.fit()
    finally:
        trainer.close()
    times = [json.loads(line)["step_time_s"] for line in
             Path(cfg.output, "metrics.jsonl").read_text().splitlines()]
    return times, (init, trainer)


def hf_run(cfg, init: dict, data, vocab: int, out: str) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from model.presets import build_model

    model = build_model(cfg.model, vocab, attn_implementation="sdpa")
    model.load_state_dict(init)
    t = cfg.train
    accum = t.global_batch // t.micro_batch

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return t.steps * t.global_batch

        def __getitem__(self, i):
            ids = torch.from_numpy(data.get(i)[0])
            return {"input_ids": ids, "labels": ids}

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps[-1] = time.perf_counter() - stamps[-1]

    o = cfg.optim
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=accum, max_steps=t.steps, learning_rate=o.lr,
        warmup_steps=o.warmup_steps, lr_scheduler_type="linear", weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps,
        max_grad_norm=o.grad_clip, save_strategy="no", report_to=[], logging_steps=10**6,
        use_cpu=True, dataloader_num_workers=0, seed=t.seed, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    return stamps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    from model.packing import PackedDataset, Source, pack
    from model.presets import make_config

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        packed = str(tmp / "packed")
        pack([Source(corpus(tmp))], packed, tokenizer="train", tokenizer_vocab=2048,
             seq_len=128, workers=2)
        cfg = make_config("tiny", [f"--data.path={packed}", f"--output={tmp / 'run'}",
                                   f"--train.steps={args.steps}", "--checkpoint.every=0"])
        tokens = cfg.train.global_batch * cfg.data.seq_len
        primer_times, (init, trainer) = primer_run(cfg)
        hf_times = hf_run(cfg, init, PackedDataset(packed), trainer.vocab, str(tmp / "hf"))
        w = args.warmup
        ours = tokens / statistics.median(primer_times[w:])
        peer = tokens / statistics.median(hf_times[w:])
        result = {"model": "tiny", "parameters": trainer.n_params, "steps": args.steps,
                  "warmup_steps_excluded": w, "tokens_per_step": tokens,
                  "threads": torch.get_num_threads(),
                  "primer_tokens_per_s": round(ours), "hf_trainer_tokens_per_s": round(peer),
                  "ratio": round(ours / peer, 3), "target": 1.2}
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
