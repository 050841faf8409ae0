"""infra: adapters to the outside world, in four rooms, each importing only the rooms before it
(tests/architecture/test_rooms.py; ARCHITECTURE.md section 1):

    infra.base     storage URIs and atomic writes, service addresses and probes, the console, the Ray connection
    infra.data     sources, image sources, shard sets, staged datasets
    infra.train    training on Ray Train (the launch plan, the driver, the worker's data feed and adapter),
                   which checkpoint to use, MLflow tracking of a run
    infra.models   the registry, the model artifact and its verified engine, export, evaluation glue,
                   batch sampling

Every room may import gan_core; none imports pipelines.
"""
