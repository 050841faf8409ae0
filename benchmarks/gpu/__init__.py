"""GPU benchmarks: pure gan_core + torch (no Ray, Prefect or MLflow), meant for one GPU box."""
