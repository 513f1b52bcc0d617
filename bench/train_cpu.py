"""Primer's training loop vs Hugging Face ``Trainer`` on CPU: the same ``tiny`` phi model
(same initial weights), the same packed windows in the same order, the same batch (16
sequences as 2 accumulated micro-batches of 8), AdamW with the same settings, fp32, in one run.

    .venv/bin/python bench/train_cpu.py            # 40 steps each (~1-2 minutes on 2 cores)
    .venv/bin/python bench/train_cpu.py --steps 20

Both sides are timed the same way: the wall time between consecutive completed optimizer
steps (so data loading, logging and the optimizer count on both sides), after warm-up. The
two run alternately for ``--rounds`` rounds and the medians over all rounds are compared, so
a busy machine slows both. Reports tokens/s of each and the ratio (target ≥ 1.2×).
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


def intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def primer_run(cfg) -> tuple[list[float], object]:
    from model.trainer import Trainer

    trainer = Trainer(cfg)
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stamps = [time.perf_counter()]
    step = trainer.train_step

    def timed_step():
        out = step()
        stamps.append(time.perf_counter())
        return out

    trainer.train_step = timed_step
    try:
        trainer.fit()
    finally:
        trainer.close()
    return intervals(stamps), (init, trainer)


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
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # once per optimizer step
            stamps.append(time.perf_counter())

    o = cfg.optim
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=t.micro_batch,
        gradient_accumulation_steps=accum, max_steps=t.steps, learning_rate=o.lr,
        warmup_steps=o.warmup_steps, lr_scheduler_type="linear", weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps,
        max_grad_norm=o.grad_clip, save_strategy="no", report_to=[], logging_steps=10**6,
        use_cpu=True, dataloader_num_workers=0, seed=t.seed, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    return intervals(stamps)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("override", nargs="*", help="--section.key=value for the Primer side")
    args = p.parse_args()
    from model.packing import PackedDataset, Source, pack
    from model.presets import make_config

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        packed = str(tmp / "packed")
        pack([Source(corpus(tmp))], packed, tokenizer="train", tokenizer_vocab=2048,
             seq_len=128, workers=2)
        tokens = 0
        primer_times: list[float] = []
        hf_times: list[float] = []
        w = args.warmup
        for r in range(args.rounds):
            cfg = make_config("tiny", [f"--data.path={packed}", f"--output={tmp / f'run{r}'}",
                                       f"--train.steps={args.steps}", "--checkpoint.every=0",
                                       *args.override])
            tokens = cfg.train.global_batch * cfg.data.seq_len
            times, (init, trainer) = primer_run(cfg)
            primer_times += times[w:]
            hf_times += hf_run(cfg, init, PackedDataset(packed), trainer.vocab,
                               str(tmp / f"hf{r}"))[w:]
        ours = tokens / statistics.median(primer_times)
        peer = tokens / statistics.median(hf_times)
        result = {"model": "tiny", "parameters": trainer.n_params, "steps": args.steps,
                  "rounds": args.rounds, "warmup_steps_excluded": w, "tokens_per_step": tokens,
                  "threads": torch.get_num_threads(),
                  "primer_tokens_per_s": round(ours), "hf_trainer_tokens_per_s": round(peer),
                  "ratio": round(ours / peer, 3), "target": 1.2}
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
