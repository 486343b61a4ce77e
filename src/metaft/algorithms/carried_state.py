"""The inner optimiser's state carried from task to task (``algorithm.inner_state=carry``, as
Reptile's reference code does), kept as module buffers so that checkpoints save it and
``load_state_dict`` restores it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaft.core.inner_loop import InnerOptimizer, InnerState


class CarriedState(nn.Module):
    """The inner optimiser's state carried from task to task (``inner_state=carry``), as buffers:
    its step count and, for every adapted parameter, each slot of the update rule."""

    def __init__(self, names: list[str], optimizer: InnerOptimizer) -> None:
        super().__init__()
        self.names = names
        self.slot_names = ("exp_avg", "exp_avg_sq") if optimizer.name == "adam" else ("momentum",)
        # Slot buffers take their shapes from the first task's parameters (``keep``).
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _key(self, slot: str, name: str) -> str:
        return f"{slot}__{name.replace('.', '__')}"

    @property
    def state(self) -> InnerState:
        if int(self.step) == 0:
            return InnerState()
        return InnerState(int(self.step), {s: {n: getattr(self, self._key(s, n)) for n in self.names}
                                           for s in self.slot_names})

    def keep(self, state: InnerState) -> None:
        """Store ``state`` (without its graph) as the carried state."""
        self.step.fill_(state.step)
        for s in self.slot_names:
            for n, t in state.slots.get(s, {}).items():
                key = self._key(s, n)
                if key in self._buffers and self._buffers[key].shape == t.shape:
                    self._buffers[key].copy_(t.detach())
                else:
                    self.register_buffer(key, t.detach().clone())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Slot buffers exist only once a task has run: make room for a checkpoint's before loading.
        for key, value in state_dict.items():
            if key.startswith(prefix) and key[len(prefix):] != "step" and key[len(prefix):] not in self._buffers:
                self.register_buffer(key[len(prefix):], torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
