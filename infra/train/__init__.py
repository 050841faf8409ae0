"""infra.train: training on a Ray cluster.

Owns: the launch plan resolved on the driver (`plan`), the worker's data feed (`feed`), the Ray Train
driver and the worker adapter around gan_core's loop (`ray_train`); which of a run's checkpoints to use, and fetching a remote one
(`checkpoints`); the MLflow tracking of a training run (`tracking`).
May import: gan_core, infra.base, infra.data. Must never import: infra.models, pipelines.
"""
