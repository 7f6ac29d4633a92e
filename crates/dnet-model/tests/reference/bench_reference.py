"""Times the PyTorch reference model (reference.py, eager, as the original
runs) with the given weights, for BENCHMARKS.md. Prints one JSON line:
{"batch": [images per second of each repeat], ...}.
usage: bench_reference.py WEIGHTS.safetensors THREADS REPEATS SECONDS BATCH [BATCH ...]
"""
import json
import sys
import time

import torch
from safetensors.torch import load_file

from reference import MultiExitInception


def main():
    weights, threads, repeats, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    batches = [int(b) for b in sys.argv[5:]]
    torch.set_num_threads(threads)
    model = MultiExitInception().eval()
    # The same weights as the tch side (speed depends on values: denormals are slow).
    missing, unexpected = model.load_state_dict(load_file(weights), strict=False)
    assert not unexpected and all(m.endswith("num_batches_tracked") for m in missing), (missing, unexpected)
    rates = {}
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            model(x, 0, 16)  # warm-up
            rates[str(batch)] = []
            for _ in range(repeats):
                done, started = 0, time.perf_counter()
                while done == 0 or time.perf_counter() - started < seconds:
                    model(x, 0, 16)
                    done += batch
                rates[str(batch)].append(done / (time.perf_counter() - started))
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
