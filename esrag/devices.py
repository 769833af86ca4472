"""Where models run: one rule for the embedder and the in-process generator."""

from __future__ import annotations


def pick_device(device: str | None) -> str:
    """``device`` as given (cpu, cuda, cuda:1, mps...), else ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
