"""What the three commands share that is not the method: photo files in and out (photos), flags, errors
and all-or-nothing writes (cli), and the share of the photos a worker takes (shard).

May import: torch, the run-time packages, and weights.py. Nothing here imports a model's pipeline, the
judging, or a command.
"""
