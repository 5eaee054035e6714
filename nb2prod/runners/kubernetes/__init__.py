"""nb2prod on Kubernetes, from the deploying machine: `deploy`, `status`, `logs`, `delete`.

One module per concern, the way papermill splits I/O handlers from engines:

* `cluster`: API clients (kubeconfig or in-cluster), the kubeconfig's contexts, API errors;
* `apply`: create or converge namespaces, RBAC, ConfigMaps, Services/Ingresses;
* `options`: what a deploy is given, checked, and its input files put in the store;
* `streams`: watches and followed pod logs (threads that outlive API hiccups);
* `pod_state`: conditions and container states read off Jobs and pods (pure);
* `deploy_state`, `jobs`, `rollout`, `deployer`: one `deploy` (batch Jobs in DAG
  order, promotion, service roll-outs);
* `status`, `logs`, `delete`: the read-back and clean-up commands.

In-cluster runs (`schedule`, `deploy --no-wait`) are `nb2prod.runners.schedule`.
This package imports the `kubernetes` client only inside the functions that
talk to a cluster, so importing it costs the CLI nothing.  The names below are
the commands' entry points.
"""

from __future__ import annotations

from nb2prod.runners.kubernetes.cluster import Kube, api_errors, cluster_check, kubeconfig_contexts
from nb2prod.runners.kubernetes.delete import delete
from nb2prod.runners.kubernetes.deployer import Deployer, deploy
from nb2prod.runners.kubernetes.logs import logs
from nb2prod.runners.kubernetes.options import options_for, upload_input_files
from nb2prod.runners.kubernetes.status import status

__all__ = ["Deployer", "Kube", "api_errors", "cluster_check", "delete", "deploy",
           "kubeconfig_contexts", "logs", "options_for", "status", "upload_input_files"]
