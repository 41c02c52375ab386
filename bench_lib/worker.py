"""A worker process: measures one group of cases and writes the results as JSON.

Each group runs in fresh processes (`python -m bench_lib.worker REQUEST.json RESULT.json`), so that
no group inherits another's heap layout or allocator state, and so that several independent
processes can be pooled: process-to-process variation is the largest noise term on a shared
machine, and only sampling several processes averages it out (the pyperf approach). A crash of
one worker fails its group's cases, not the run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench_lib.allocator import pin_glibc_malloc
from bench_lib.cases import INFERENCE, Profile
from bench_lib.devices import make_device
from bench_lib.environment import torch_threads
from bench_lib.models import get_model
from bench_lib.results import CaseResult

Request = Mapping[str, Any]


def _inference(request: Request) -> dict[str, CaseResult]:
    from bench_lib.inference import measure_inference_group

    return measure_inference_group(
        get_model(request["model"]),
        make_device(request["device"]),
        request["batch_size"],
        Profile(**{**request["profile"], "batch_sizes": tuple(request["profile"]["batch_sizes"])}),
        request["variants"],
    )


SUITES: dict[str, Callable[[Request], dict[str, CaseResult]]] = {INFERENCE: _inference}


def run_request(request: Request) -> dict[str, CaseResult]:
    """Measure the group `request` describes, in this process."""
    if request.get("pin_malloc"):
        pin_glibc_malloc()
    with torch_threads(request.get("threads")):
        return SUITES[request["suite"]](request)


def main(argv: list[str]) -> int:
    request_path, result_path = (Path(a) for a in argv)
    results = run_request(json.loads(request_path.read_text()))
    result_path.write_text(json.dumps({name: r.to_dict() for name, r in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
