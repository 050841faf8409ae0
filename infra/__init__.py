"""infra: adapters to the outside world (storage, Parquet datasets, Ray Train, MLflow, export)."""
