"""Planning a run for a budget: model size, tokens, batch and learning rate (issue 5).

- ``budget``: reading a budget as FLOPs, wall-clock or tokens;
- ``shapes``: parameter targets -> (n_layer, n_head, d_model);
- ``rules``: the published allocation rules (Komatsuzaki, Chinchilla, Kaplan,
  Muennighoff's data-constrained law) and a user-fitted law;
- ``heuristics``: batch size and learning rate;
- ``calibrate``: measured training throughput on this machine, cached;
- ``estimate``: wall-clock of a planned run, evaluation and checkpoints included;
- ``planner``: putting them together for every rule; ``planfile``: plan.toml and its
  plan.json sidecar; ``check``: plan vs actual run;
- ``sweep``: an IsoFLOP grid of runs and the CSV ``oneepoch scaling fit`` reads;
- ``cli``: ``oneepoch plan`` and ``oneepoch sweep``.

See docs/planning.md for the rules, their sources and assumptions.
"""
