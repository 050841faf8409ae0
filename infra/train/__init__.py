"""infra.train: training on a Ray cluster.

Owns: the launch plan, the Ray Train driver, the worker's data feed and the worker adapter around
gan_core's loop (`ray_train`); which of a run's checkpoints to use, and fetching a remote one
(`checkpoints`); the MLflow tracking of a training run (`tracking`).
May import: gan_core, infra.base, infra.data. Must never import: infra.models, pipelines.
"""
