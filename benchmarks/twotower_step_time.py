"""Seconds per two-tower training step for a full and a corpus-sized softmax (docs/twotower.md, `vocabulary`).

    .venv/bin/python benchmarks/twotower_step_time.py [--vocab 30522 4627] [--steps 5] [--threads 2]

Builds the default config's two-tower LM (window, n_layer, n_embd, n_head, batch_size and the optimiser settings
from config.yaml's `twotower:` section) for each vocabulary size and times training steps exactly as
`train_two_tower` takes them (forward, cross-entropy, backward, gradient clipping, AdamW, scheduler) on random
token ids, after one untimed warm-up step. 30,522 is the MiniLM tokenizer's vocabulary (`vocabulary: full`),
4,627 the classes of `vocabulary: corpus` on the default reviews (4,626 train types + 1 unseen class).
Prints the load average too: on a shared machine the times grow with it.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[30522, 4627])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from lmcompare.twotower import TowerConfig, TrainConfig, build_model, make_optimizer

    torch.set_num_threads(args.threads)
    section = yaml.safe_load((PROJECT / "config.yaml").read_text())["twotower"]
    defaults = TrainConfig()  # keys that config.yaml leaves to the schema's defaults
    train = TrainConfig(**{key: type(getattr(defaults, key))(section.get(key, getattr(defaults, key)))
                           for key in ("batch_size", "learning_rate", "weight_decay", "warmup_steps", "grad_clip")})
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.threads} torch threads; "
          f"window {section['window']}, n_layer {section['n_layer']}, n_embd {section['n_embd']}, "
          f"n_head {section['n_head']}, batch {train.batch_size}; {args.steps} timed steps\n")
    print("| vocabulary | seconds per step |\n| ---: | ---: |")
    per_step = {}
    for vocab in args.vocab:
        cfg = TowerConfig(vocab_size=vocab, window=int(section["window"]), n_layer=int(section["n_layer"]),
                          n_embd=int(section["n_embd"]), n_head=int(section["n_head"]),
                          dropout=float(section.get("dropout", 0.0)))
        model = build_model(cfg, seed=0)
        model.train()
        optimizer, scheduler = make_optimizer(model, train)
        generator = torch.Generator().manual_seed(0)

        def step():
            batch = torch.randint(0, vocab, (train.batch_size, cfg.window + 1), generator=generator)
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), batch[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()

        step()  # warm-up
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        per_step[vocab] = (time.perf_counter() - started) / args.steps
        print(f"| {vocab:,} | {per_step[vocab]:.3f} |")
    if len(per_step) == 2:
        (big, t_big), (small, t_small) = sorted(per_step.items(), reverse=True)
        print(f"\n{big:,} vs {small:,} classes: {t_big / t_small:.1f}x the time per step")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
