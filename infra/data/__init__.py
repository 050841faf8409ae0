"""infra.data: data at rest.

Owns: the sources ganpipe reads (built-ins, arrays, image folders, Parquet, zip; `sources`,
`image_sources`), content-addressed shard sets with their manifests and checksums (`shardset`) and their
writer and executor (`shard_writer`), and staged, versioned datasets and their readers (`datasets`).
May import: gan_core, infra.base. Must never import: infra.train, infra.models, pipelines.
"""
