"""gan_core: the GAN engine in plain PyTorch (Goodfellow et al. 2014 and the usual stabilisers).

Imports nothing from ray, prefect, mlflow, boto3 or pyarrow, so it runs unchanged on a GPU box with
only PyTorch, inside Ray workers and inside an MLflow model server.
"""

from .config import ConfigError, GANConfig, get_preset
from .loop import NonFiniteLossError, Snapshot, TrainResult, train

__all__ = ["ConfigError", "GANConfig", "get_preset", "NonFiniteLossError", "Snapshot", "TrainResult", "train"]
