"""Trains the demo model: the multi-exit Inception-v3 of docs/model-spec.md
(the project's PyTorch reference, crates/dnet-model/tests/reference/) on the
UCI handwritten digits that scikit-learn ships (1797 images of 8x8, 10
classes): the one labelled image set a machine without downloads has.

Each digit is upscaled (bilinear) to 32x32 and repeated into the three
channels, stored as bytes, and normalised exactly as the units normalise a
CIFAR-10 record (pixels / 255, then per-channel mean and std). The split is
fixed by the seed: 270 test, 270 validation, the other 1257 train. The loss
is BranchyNet's joint loss: the sum over all 16 exits of each exit's
cross-entropy, every exit weighted 1 (early exits learn to answer, and the
gradient of each reaches the trunk below it). Adam, learning rate 1e-3 with
cosine decay, batches of 32, no augmentation; every random choice comes from
the seed, and the run is repeatable with the same thread count.

With --heads-only (for tests: 1.5 to 4 minutes on 2 cores) the trunk keeps the random
weights of reference.randomize(seed) and only the exit heads are trained,
on the trunk's features computed once: confidences that mean something, at
a fraction of the cost, written as digits-heads.safetensors.

Writes into OUT (default ~/.cache/dnet/demo):
  digits.safetensors     the weights, original state_dict names (--weights)
  digits-validation.bin  the validation set in CIFAR-10's binary format
                         (label byte + 3072 pixel bytes: --dataset)
  digits-test.bin        the test set, same format
  digits-report.json     sizes, epochs, seconds, accuracy per exit on each set
With --heads-only the weights and the report are digits-heads.safetensors
and digits-heads-report.json (the data sets are the same).
usage: train_demo.py [--out DIR] [--epochs N] [--threads N] [--seed S] [--heads-only]
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "crates/dnet-model/tests/reference"))
from reference import MultiExitInception, randomize  # noqa: E402

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
TEST, VALIDATION = 270, 270
EXITS = 16


def digits_as_bytes():
    """(uint8 images [N, 3, 32, 32], labels [N]) from scikit-learn's digits."""
    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    large = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    pixels = (large * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return pixels, torch.tensor(digits.target, dtype=torch.uint8)


def normalise(pixels):
    return (pixels.float() / 255.0 - MEAN) / STD


def write_cifar(path, pixels, labels):
    """CIFAR-10 binary: per record a label byte, then the R, G and B planes."""
    records = torch.cat([labels.view(-1, 1), pixels.reshape(len(labels), -1)], 1)
    with open(path, "wb") as f:
        f.write(records.numpy().tobytes())


def all_exits(model, x):
    """The scores of exits 1..16, computing each trunk layer once."""
    scores = []
    for i in range(EXITS):
        x = model.layer(i, x)
        if i + 1 < EXITS:
            j = 4 * i
            h = torch.flatten(model.exits[j](x), 1)
            scores.append(model.exits[j + 3](model.exits[j + 2](model.exits[j + 1](h))))
    scores.append(model.fc(torch.flatten(F.avg_pool2d(x, kernel_size=4), 1)))
    return scores


def features(model, pixels, batch=64):
    """Per exit, what its head reads (the pooled trunk), for every image."""
    out = [[] for _ in range(EXITS)]
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            x = normalise(pixels[start:start + batch])
            for i in range(EXITS):
                x = model.layer(i, x)
                if i + 1 < EXITS:
                    out[i].append(torch.flatten(model.exits[4 * i](x), 1))
            out[EXITS - 1].append(torch.flatten(F.avg_pool2d(x, kernel_size=4), 1))
    return [torch.cat(f) for f in out]


def head_scores(model, e, h):
    """Exit e+1's scores from what its head reads."""
    if e + 1 == EXITS:
        return model.fc(h)
    j = 4 * e
    return model.exits[j + 3](model.exits[j + 2](model.exits[j + 1](h)))


def train_heads(model, pixels, labels, epochs, seed):
    """Trains only the exit heads, on the random trunk's features."""
    model.eval()
    cached = features(model, pixels)
    heads = [p for name, p in model.named_parameters() if name.startswith(("exits.", "fc."))]
    optimizer = torch.optim.Adam(heads, lr=1e-3)
    shuffle = torch.Generator().manual_seed(seed + 1)
    truth = labels.long()
    for epoch in range(epochs):
        for part in torch.randperm(len(labels), generator=shuffle).split(32):
            loss = sum(F.cross_entropy(head_scores(model, e, cached[e][part]), truth[part]) for e in range(EXITS))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"\r[train] heads, epoch {epoch + 1}/{epochs}: joint loss {loss.item():.3f}", end="", file=sys.stderr)
    print(file=sys.stderr)


def accuracy(model, pixels, labels, batch=64):
    """Accuracy of each exit, 1..16."""
    model.eval()
    right = torch.zeros(EXITS)
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            scores = all_exits(model, normalise(pixels[start:start + batch]))
            truth = labels[start:start + batch].long()
            right += torch.tensor([(s.argmax(1) == truth).sum().item() for s in scores], dtype=torch.float32)
    return [round(r / len(labels), 4) for r in right.tolist()]


def train_all(model, pixels, labels, epochs, seed):
    """The joint loss over all exits, every layer trained."""
    batch = 32
    steps = epochs * ((len(labels) + batch - 1) // batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    shuffle = torch.Generator().manual_seed(seed + 1)
    started = time.time()
    for epoch in range(epochs):
        model.train()
        total, seen = 0.0, 0
        for part in torch.randperm(len(labels), generator=shuffle).split(batch):
            scores = all_exits(model, normalise(pixels[part]))
            truth = labels[part].long()
            loss = sum(F.cross_entropy(s, truth) for s in scores)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(part)
            seen += len(part)
            print(f"\r[train] epoch {epoch + 1}/{epochs}: {seen}/{len(labels)} images, "
                  f"joint loss {total / seen:.3f}, {time.time() - started:.0f} s", end="", file=sys.stderr)
        print(file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("DNET_CACHE", os.path.expanduser("~/.cache/dnet")), "demo"))
    parser.add_argument("--epochs", type=int, help="default: 5, or 30 with --heads-only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heads-only", action="store_true",
                        help="random trunk, train the exit heads only (fast: for tests)")
    args = parser.parse_args()
    args.epochs = args.epochs or (30 if args.heads_only else 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    pixels, labels = digits_as_bytes()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    test, validation, train = order[:TEST], order[TEST:TEST + VALIDATION], order[TEST + VALIDATION:]
    write_cifar(os.path.join(args.out, "digits-test.bin"), pixels[test], labels[test])
    write_cifar(os.path.join(args.out, "digits-validation.bin"), pixels[validation], labels[validation])

    model = MultiExitInception()
    started = time.time()
    if args.heads_only:
        randomize(model, args.seed)
        train_heads(model, pixels[train], labels[train], args.epochs, args.seed)
    else:
        train_all(model, pixels[train], labels[train], args.epochs, args.seed)
    seconds = time.time() - started

    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    name = "digits-heads" if args.heads_only else "digits"
    save_file(state, os.path.join(args.out, f"{name}.safetensors"))
    report = {
        "seed": args.seed, "epochs": args.epochs, "threads": args.threads, "train_seconds": round(seconds),
        "trained": "exit heads only, random trunk" if args.heads_only else "all layers",
        "images": {"train": len(train), "validation": len(validation), "test": len(test)},
        "loss": "sum over exits 1..16 of cross-entropy, each weighted 1",
        "accuracy": {"validation": accuracy(model, pixels[validation], labels[validation]),
                     "test": accuracy(model, pixels[test], labels[test])},
    }
    with open(os.path.join(args.out, f"{name}-report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"[train] {args.epochs} epochs over {len(train)} images in {seconds / 60:.1f} min ({args.threads} threads)")
    print("[train] test accuracy per exit: " + ", ".join(
        f"{e + 1}: {a:.3f}" for e, a in enumerate(report["accuracy"]["test"])))
    print(f"[train] wrote {args.out}/{name}.safetensors, digits-validation.bin, digits-test.bin, {name}-report.json")


if __name__ == "__main__":
    main()
