"""Training: data sets, models, trainer, evaluation and export (``recserve.training``).

Training never imports the server; the artifact on disk is all that passes between them.
"""
