"""infra.base: what every other room stands on.

Owns: storage URIs, locations and atomic writes on local disk and S3 (`storage`); service addresses, the
local home and the probes that check a service answers (`settings`); the console's marked lines and the
log (`console`); the connection to a Ray cluster and the hook every Ray worker runs first (`ray_cluster`,
`ray_hooks`).
May import: gan_core, and its own modules. Must never import: infra.data, infra.train, infra.models, pipelines.
"""
