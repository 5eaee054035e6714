"""Every object of one deploy, grouped by when the runner creates them."""

from __future__ import annotations

from dataclasses import dataclass

from nb2prod.manifests.code import StageCode, all_stage_code, code_configmap, runtime_code
from nb2prod.manifests.jobs import batch_job, promote_job
from nb2prod.manifests.names import Obj, check_pipeline_name
from nb2prod.manifests.options import Options, store_mount
from nb2prod.manifests.rbac import namespace_object, rbac_objects
from nb2prod.manifests.services import deployment, service_objects
from nb2prod.pipeline import Pipeline


@dataclass
class Plan:
    """All objects of one deploy, grouped by when the runner creates them."""

    namespace: Obj
    setup: list[Obj]                 # RBAC + code ConfigMaps: created before anything runs
    jobs: dict[str, Obj]             # batch stage -> Job
    promote: Obj | None              # after every Job completed
    services: dict[str, list[Obj]]   # service stage -> service_objects()
    codes: dict[str, StageCode]

    def objects(self) -> list[Obj]:
        """Every object in creation order (what `render` prints)."""
        out = [self.namespace, *self.setup, *self.jobs.values()]
        if self.promote is not None:
            out.append(self.promote)
        for objs in self.services.values():
            out.extend(objs)
        return out


def plan(pipeline: Pipeline, opts: Options) -> Plan:
    """Build every object of a deploy of `pipeline` for run `opts.run_id`."""
    check_pipeline_name(pipeline)
    store_mount(opts.store)  # refuse file:// before reading any code
    codes = all_stage_code(pipeline, opts)
    setup = rbac_objects(pipeline, opts.namespace)
    setup += [code_configmap(pipeline, runtime_code(pipeline), opts.namespace)]
    setup += [code_configmap(pipeline, codes[name], opts.namespace) for name in pipeline.order]
    jobs = {name: batch_job(pipeline, pipeline.stages[name], codes[name], opts)
            for name in pipeline.batch}
    promote = promote_job(pipeline, codes[pipeline.batch[0]], opts) if pipeline.batch else None
    services = {name: service_objects(pipeline, pipeline.stages[name],
                                      deployment(pipeline, pipeline.stages[name], codes[name],
                                                 opts, opts.run_id), opts.namespace)
                for name in pipeline.services}
    return Plan(namespace_object(pipeline, opts.namespace), setup, jobs, promote, services, codes)
