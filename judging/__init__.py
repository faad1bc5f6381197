"""How protection is measured: video and photo metrics (metrics), the transformations an adversary may
apply to a guarded photo (transforms, also used by the attack's EOT), the survival report (survival),
and the preview's figures (figures).

May import: torch, the run-time packages, model/ (the judges' networks) and plumbing/. Nothing here
imports a model's pipeline or a command: a pipeline arrives as an argument.
"""
