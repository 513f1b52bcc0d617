"""Train a phi model: parse config → build :class:`~model.trainer.Trainer` → fit → clean up.

One process (CPU or one GPU)::

    python -m model.train --preset tiny --data ./primer-data/corpus --output ./runs/t1 --steps 200

Several processes on one machine (gloo on CPU, NCCL on GPUs)::

    torchrun --nproc-per-node 8 -m model.train --preset phi1 --data s3://b/packed \\
        --output s3://b/runs/phi1 --resume auto

Cluster: a Kubeflow PyTorchJob whose pods run the torchrun line above (the operator sets
MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and PET_*); ``--resume auto`` makes a restarted
pod continue from the newest committed checkpoint. Any further ``--section.key=value``
argument overrides the preset (e.g. ``--train.micro_batch=4 --parallel.compile=true``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from model.presets import make_config
from model.trainer import Trainer


def parse(argv: list[str]):
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", help="phi1, phi1_small or tiny")
    p.add_argument("--data", help="packed token dataset, or a text dataset to pack first")
    p.add_argument("--output", help="run URI for checkpoints and metrics")
    p.add_argument("--steps", type=int, help="length of the run (and its LR schedule)")
    p.add_argument("--stop-at", type=int, help="stop after this step; the schedule is unchanged")
    p.add_argument("--resume", help="'auto' or a checkpoint URI")
    p.add_argument("--finetune", action="store_true", help="the CodeExercises finetune variant")
    p.add_argument("--init", help="checkpoint whose weights start the run (finetuning)")
    p.add_argument("--config", help="YAML file with config sections")
    args, overrides = p.parse_known_args(argv)
    flags = {"data.path": args.data, "output": args.output, "train.steps": args.steps,
             "train.stop_at": args.stop_at,
             "checkpoint.resume": args.resume, "train.init_from": args.init}
    overrides += [f"--{k}={v}" for k, v in flags.items() if v is not None]
    return make_config(args.preset, overrides, finetuning=args.finetune,
                       config_file=args.config)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trainer = Trainer(parse(sys.argv[1:] if argv is None else argv))
    try:
        trainer.fit()
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
