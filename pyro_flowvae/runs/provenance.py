"""Provenance: the machine and the versions a figure came from, recorded beside it in every results file."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["cpu_name", "machine", "versions"]


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else what platform knows)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> str:
    """One line naming the hardware a figure came from: the GPU(s), or the CPU cores and torch's threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{os.cpu_count()} CPU cores ({cpu_name()}), torch threads {torch.get_num_threads()}, no GPU"


def versions() -> dict[str, str]:
    """Versions of what produced a figure."""
    import numpy
    import pyro

    import pyro_flowvae

    return {
        "pyro_flowvae": pyro_flowvae.__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda or "none",
    }
