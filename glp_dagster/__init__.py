"""The Dagster code location of glp: thin assets over `glp.pipeline`, checks, resources, partitions."""
