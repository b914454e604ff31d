"""Measuring this machine, bottom to top.

``machine``: what the machine is (device names, ``hardware_info``, ``sync``, the device of a
run), the one key that identifies it in every cached measurement, and the peak FLOP/s that
MFU is measured against. It imports no other part of oneepoch that uses torch.
``harness``: the trainer's own model, AdamW and step (``oneepoch.step``) on synthetic tokens,
and the timers. ``dtype``: ``--dtype auto``, the run's step timed in both dtypes through the
harness. ``throughput``: the planner's measurement of one shape and batch through the
harness, in a process of its own on a CPU. The trainer imports ``machine`` and ``dtype``;
the model and the step import nothing from here.
"""
