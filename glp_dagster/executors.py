"""The code location's executor: in-process by default, a multi-process or Dask cluster executor by run config.

Dagster lets a code location name one executor; run config can only configure it. So `glp_executor` is a
selector, like Dagster's own `multi_or_in_process_executor`, with a third choice, dagster-dask, so that a cluster
takes the config alone (no code edits):

    execution: {config: {in_process: {}}}                                   # the default: `make run`
    execution: {config: {multiprocess: {max_concurrent: 2}}}                # one machine, a process per step
    execution: {config: {dask: {cluster: {local: {n_workers: 2}}}}}         # a LocalCluster started by the run
    execution: {config: {dask: {cluster: {existing: {address: "tcp://scheduler:8786"}}}}}
    execution: {config: {dask: {cluster: {slurm: {cores: 8, memory: "32GB", ...}}}}}   # dask-jobqueue

Why Dask (dagster-dask), not Celery: a research group's shared compute is a SLURM (or PBS/SGE/LSF) cluster, and
Dask runs on it with no service to operate. dask-jobqueue submits the workers as batch jobs and the scheduler
lives in the run, where Celery needs a broker (Redis) and worker daemons kept alive beside the queue. The same
config selects a LocalCluster on a workstation, or an existing `dask scheduler` anywhere. dagster_dask (and
dask.distributed, about 3 s to import) is imported only by runs that choose it.
"""

import dagster as dg
from dagster._core.definitions.executor_definition import (
    IN_PROC_CONFIG,
    MULTI_PROC_CONFIG,
    _core_in_process_executor_creation,
    _core_multiprocess_executor_creation,
    multiple_process_executor_requirements,
)

# dagster_dask.dask_executor's schema, restated so that loading the code location does not import dask
_CLUSTERS = ("local", "yarn", "ssh", "pbs", "moab", "sge", "lsf", "slurm", "oar", "kube")
DASK_CONFIG = dg.Field(
    {"cluster": dg.Field(dg.Selector({
        "existing": dg.Field({"address": dg.StringSource}, description="Connect to an existing scheduler."),
        **{name: dg.Field(dg.Permissive(), is_required=False,
                          description=f"Keyword arguments of the {name} cluster (dask.distributed / dask-jobqueue).")
           for name in _CLUSTERS},
    }), default_value={"local": {}})},
    description="Each step a Dask task on a cluster's workers (dagster-dask); the run needs a persistent instance "
    "(DAGSTER_HOME) that the workers can reach.",
)


def _requirements(config: dict) -> list:
    return multiple_process_executor_requirements() if "in_process" not in config else []


@dg.executor(
    name="glp_executor",
    config_schema=dg.Field(dg.Selector({"in_process": IN_PROC_CONFIG, "multiprocess": MULTI_PROC_CONFIG,
                                        "dask": DASK_CONFIG}), default_value={"in_process": {}}),
    requirements=_requirements,
)
def glp_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """In-process (default), multi-process or Dask, chosen by the run config's `execution.config` key."""
    config = init_context.executor_config
    if "dask" in config:
        from dagster_dask.executor import DaskExecutor

        ((cluster_type, cluster_config),) = config["dask"]["cluster"].items()
        return DaskExecutor(cluster_type, cluster_config)
    if "multiprocess" in config:
        return _core_multiprocess_executor_creation(config["multiprocess"])
    return _core_in_process_executor_creation(config["in_process"])
