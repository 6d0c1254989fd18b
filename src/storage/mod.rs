//! Block devices: GPT, partition nodes, loop devices, mkfs (being written).
