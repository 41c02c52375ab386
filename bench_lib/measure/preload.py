"""Imported once by the forkserver (`runner._context`) before it forks any worker: what every
worker needs, so that no worker pays for it.

- `torch._dynamo` and `torch._inductor`, which torch imports lazily on a worker's first optimizer
  (`torch.optim` wraps its methods with dynamo's `disable`) or profiler (the memory trace): ~1.9 s
  per worker process on a 2-core machine.
- peft (the `lora` strategy; ~4 s, it imports transformers), where installed.
- `gc.freeze()` afterwards: the hundreds of thousands of objects these imports create move to
  the permanent generation, so the full collections the timing does before and after a group
  (`timing.gc_disabled`) do not walk them again in every worker (0.2 s per collection otherwise).
"""

import gc

import torch._dynamo
import torch._inductor  # noqa: F401

import bench_lib.measure.worker
import bench_lib.suites.finetune.measure
import bench_lib.suites.inference.measure
import bench_lib.suites.ruler.measure  # noqa: F401

try:
    import peft  # noqa: F401
except ImportError:  # the lora extra is not installed: the suite leaves `lora` out
    pass

gc.collect()
gc.freeze()
