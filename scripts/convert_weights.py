#!/usr/bin/env python3
"""Convert the original DNet weights (a state_dict saved with torch.save, .pkl)
to .safetensors with the same tensor names, for `computation-unit --weights`.

usage: convert_weights.py IN.pkl OUT.safetensors

The pickle is read with torch.load(weights_only=True), which refuses to run
code hidden in it. Run it with the torch venv: ~/.cache/dnet/venv/bin/python.
"""
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1], sys.argv[2]
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    tensors = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            sys.exit(f"{source}: entry {name!r} is not a tensor; expected a state_dict")
        # DataParallel checkpoints prefix every name with "module."
        tensors[name.removeprefix("module.")] = value.detach().contiguous()
    save_file(tensors, target)
    print(f"wrote {len(tensors)} tensors to {target}")


if __name__ == "__main__":
    main()
