"""A Kubernetes stand-in for the test suite.

No cluster, Docker engine or kube-apiserver can run on the development and CI
machines, yet deploy/schedule code must be exercised through the official
``kubernetes`` client over HTTP, exactly as against a real cluster. This
package provides an in-process API server (real HTTP, and HTTPS with
service-account tokens and RBAC for in-pod clients), controllers for Jobs,
Deployments/ReplicaSets and CronJobs, and a "process kubelet" that runs each
container's command as a local subprocess. It is test infrastructure only and
is not shipped in the wheel.

Entry points: :class:`tests.kube.standin.KubeStandIn`, the pytest fixture
:func:`tests.kube.fixtures.kube_standin`, and ``python -m tests.kube.standin``.
"""
