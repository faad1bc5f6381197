"""What the commands share that is not the method: photo files in and out (photos), every other small file read
(reading), flags, errors and all-or-nothing writes (cli), the inputs no output may land on and what resume
compares (files), the first second of a command (starting), the share of the photos a worker takes (shard), and
the device memory a run needs, estimated before loading, and the mode chosen from it (memory).

May import: torch, the run-time packages, and weights.py. Nothing here imports a model's pipeline, the
judging, or a command. reading.py and starting.py import only the standard library: weights.py reads its
configs through reading.py.
"""
