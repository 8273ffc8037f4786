"""Tensor parallelism over torch.distributed: one process per device, each holding a shard of every
attention and MLP layer (see sharding.py), rank 0 scheduling and sampling (see workers.py)."""
