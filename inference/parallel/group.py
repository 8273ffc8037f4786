"""The tensor-parallel process group: NCCL (GPUs) or gloo (CPU) for the activations, gloo for commands.

Rank 0 hosts the rendezvous store on loopback and tells the other ranks its port, so there is no port
to pick in advance and nothing listens beyond 127.0.0.1. Commands (each step's inputs) travel over a
second, gloo group: they are small Python objects, and on GPUs they would otherwise cost a device copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

STORE_HOST = "127.0.0.1"
# Every rank must reach the rendezvous within this; a rank that never starts fails start-up, not hangs it.
STARTUP_TIMEOUT = timedelta(minutes=3)
# A collective inside a step that waits longer than this is a hang (a rank died without closing its
# sockets); gloo reports a closed connection at once, NCCL's watchdog only after this.
STEP_TIMEOUT = timedelta(minutes=5)
# Ranks wait for the next command as long as the server is idle; rank deaths are caught by the
# process monitors (see workers.py), not by this timeout.
COMMAND_TIMEOUT = timedelta(days=365)


def rank_device(device: torch.device, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device.type == "cuda" else device


@dataclass(frozen=True)
class RankGroup:
    rank: int
    world_size: int
    device: torch.device
    commands: dist.ProcessGroup

    def broadcast(self, command: object = None) -> object:
        """Rank 0 sends `command`; every other rank returns it."""
        box = [command]
        dist.broadcast_object_list(box, src=0, group=self.commands)
        return box[0]


def join_group(store: dist.Store, rank: int, world_size: int, device: torch.device) -> RankGroup:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=STEP_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    commands = dist.new_group(backend="gloo", timeout=COMMAND_TIMEOUT)
    return RankGroup(rank, world_size, device, commands)


def leave_group(peers_alive: bool = True) -> None:
    """Tear the groups down, so that a later group can form in this process. With a member dead, only
    gloo's teardown is safe: NCCL's can block on the dead member, and the process is ending anyway."""
    if dist.is_initialized() and (peers_alive or dist.get_backend() == "gloo"):
        dist.destroy_process_group()
