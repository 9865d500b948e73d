"""`python -m moe_core.train`: rebuild the bundled demo model from scratch (resumable).

Needs the Debian packages in `moe_core.train.corpus.DEBIAN_PACKAGES`. Re-running the same command
resumes from `--work`'s last checkpoint; `--card` then evaluates the exported model and writes its card.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from moe_core.train.loop import TrainConfig, train

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "models" / "demo-mixtral"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/demo-train"), help="cache, checkpoints")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the finished model is saved")
    parser.add_argument("--card", action="store_true", help="after training, evaluate and write README.md")
    parser.add_argument("--tokenizer", type=Path, help="reuse this tokenizer folder instead of training one")
    for field in fields(TrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    train(config, args.work, args.out, args.tokenizer)
    if args.card:
        from moe_core.train.card import write_card

        write_card(args.out, args.work)


if __name__ == "__main__":
    main()
