"""infra.models: the trained generator as a product.

Owns: the MLflow model registry and promotion (`registry`), the model artifact and its verified engine
(`generator_model`, which runs in consumers' processes and imports only mlflow, numpy, torch and the
shipped engine), export to portable formats (`export`), evaluation glue for the registry (`evaluation`),
and batch sampling to shard sets on Ray (`batch_sampling`).
May import: gan_core, infra.base, infra.data, infra.train. Must never import: pipelines.
"""
