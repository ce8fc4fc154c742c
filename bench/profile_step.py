"""Where a training step's time goes: torch.profiler over charrnn's own training loop.

python bench/profile_step.py [--precision fp32|bf16] [--hidden-size 256] [--batch-size 24]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charrnn.config import ModelConfig, TrainConfig  # noqa: E402
from charrnn.corpus import build_corpus, read_text  # noqa: E402
from charrnn.rundir import RunDir  # noqa: E402
from charrnn.training import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    corpus = build_corpus(read_text(os.path.join(ROOT, "corpora", "tinyshakespeare.txt")), 0.1, 1)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), hidden_size=args.hidden_size)
    config = TrainConfig(
        batch_size=args.batch_size,
        max_steps=args.steps,
        eval_every=10**9,
        precision=args.precision,
        device="cpu",
    )
    run_dir = RunDir(tempfile.mkdtemp(prefix="charrnn-profile-"))
    run_dir.prepare(resume=False, force=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model_config, config, corpus, run_dir)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
