"""The roles of a run, each an object with one job: ``Rollout`` (prompts in, scored
completions out), ``Trainer`` (state, step, publish) and the ``Placement`` of both on
devices. The loop (magjax/loop.py), evaluation, difficulty filtering and SFT compose them."""
