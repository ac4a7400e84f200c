"""Mesh and sharding rules, train state, the jitted step, the loop and checkpointing."""
