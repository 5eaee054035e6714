"""Authentication (bearer tokens) and RBAC authorization, as kube-apiserver applies them.

Authentication:

* no ``Authorization`` header, or the kubeconfig's token: a cluster admin
  (everything allowed, as before RBAC was enforced here);
* a service-account token ``standin-sa.<namespace>.<name>.<signature>``, as
  the kubelet writes for a projected ``serviceAccountToken`` source: the user
  ``system:serviceaccount:<namespace>:<name>`` with the groups
  ``system:serviceaccounts``, ``system:serviceaccounts:<namespace>`` and
  ``system:authenticated``. The signature is an HMAC with a key made at
  start-up; a token with a wrong signature, or naming a ServiceAccount that
  does not exist (any more), is 401 Unauthorized;
* any other bearer token: 401 Unauthorized.

Authorization of service-account requests follows the RBAC authorizer
(``plugin/pkg/auth/authorizer/rbac``): the rules of ClusterRoles bound by
ClusterRoleBindings, and of Roles / ClusterRoles bound by RoleBindings of the
request's namespace, with subjects of kind ServiceAccount, User and Group;
rules match apiGroups, resources (``deployments/scale``, ``*/scale``),
resourceNames and verbs, ``*`` being a wildcard. Denials are 403 with the
apiserver's message and details. Discovery paths (``/api``, ``/apis``,
``/version``, ``/healthz`` ...) are open to every authenticated user, as the
default ``system:discovery`` binding makes them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from .errors import ApiError
from .store import Obj, Store

SA_TOKEN_PREFIX = "standin-sa."
ADMIN_USER = "kubernetes-admin"
ANONYMOUS_USER = "system:anonymous"
RBAC_GROUP = "rbac.authorization.k8s.io"
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/")


@dataclass(frozen=True)
class UserInfo:
    """An authenticated user; ``admin`` users are not subject to authorization."""

    name: str
    groups: tuple[str, ...] = ()
    admin: bool = False


@dataclass
class Attributes:
    """What a request asks to do (the apiserver's ``RequestInfo``)."""

    verb: str
    resource_request: bool = True
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    rbac_errors: list[str] = field(default_factory=list)


def unauthorized() -> ApiError:
    """401 as kube-apiserver answers an unknown or invalid bearer token."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(user: UserInfo, attrs: Attributes, reason: str = "") -> ApiError:
    """403 with the message ``responsewriters.Forbidden`` builds."""
    if not attrs.resource_request:
        message = f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"'
        return ApiError(403, "Forbidden", message + (f": {reason}" if reason else ""), {})
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    where = (f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope")
    why = f'User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {where}'
    if reason:
        why += f": {reason}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: dict[str, str] = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.api_group:
        details["group"] = attrs.api_group
    details["kind"] = attrs.resource
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", details)


class Auth:
    """Token authenticator and RBAC authorizer over the objects in the store."""

    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self.admin_token = admin_token
        self._key = secrets.token_bytes(32)

    # ------------------------------------------------------------------ tokens
    def _signature(self, namespace: str, name: str) -> str:
        return hmac.new(self._key, f"{namespace}/{name}".encode(), hashlib.sha256).hexdigest()[:40]

    def token_for(self, namespace: str, name: str) -> str:
        """The token of ServiceAccount ``namespace/name`` (what a projected token volume contains)."""
        return f"{SA_TOKEN_PREFIX}{namespace}.{name}.{self._signature(namespace, name)}"

    def authenticate(self, authorization: str | None) -> UserInfo:
        """The user behind an ``Authorization`` header value; raises 401 for a bad bearer token."""
        if not authorization:
            return UserInfo(ANONYMOUS_USER, ("system:unauthenticated",), admin=True)
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized()
        if hmac.compare_digest(token, self.admin_token):
            return UserInfo(ADMIN_USER, ("system:masters", "system:authenticated"), admin=True)
        if not token.startswith(SA_TOKEN_PREFIX):
            raise unauthorized()
        namespace, _, rest = token[len(SA_TOKEN_PREFIX):].partition(".")
        name, _, signature = rest.rpartition(".")
        if not namespace or not name or not hmac.compare_digest(signature, self._signature(namespace, name)):
            raise unauthorized()
        if self.store.peek("serviceaccounts", namespace, name) is None:
            raise unauthorized()
        return UserInfo(f"system:serviceaccount:{namespace}:{name}",
                        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))

    # ------------------------------------------------------------------ RBAC
    def authorize(self, user: UserInfo, attrs: Attributes) -> None:
        """Raise 403 unless RBAC allows ``attrs`` to ``user``."""
        if user.admin:
            return
        if not attrs.resource_request and "system:authenticated" in user.groups and any(
                _path_matches(p, attrs.path) for p in DISCOVERY_PATHS) and attrs.verb == "get":
            return
        errors: list[str] = []
        for rule in self._rules(user, attrs.namespace, errors):
            if _rule_allows(rule, attrs):
                return
        reason = ""
        if errors:
            reason = "RBAC: " + (errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
        raise forbidden(user, attrs, reason)

    def _rules(self, user: UserInfo, namespace: str, errors: list[str]) -> list[Obj]:
        rules: list[Obj] = []
        for binding in self.store.scan("clusterrolebindings"):
            if _binds(binding, user, ""):
                rules.extend(self._role_rules(binding, "", errors))
        if namespace:
            for binding in self.store.scan("rolebindings", namespace):
                if _binds(binding, user, namespace):
                    rules.extend(self._role_rules(binding, namespace, errors))
        return rules

    def _role_rules(self, binding: Obj, namespace: str, errors: list[str]) -> list[Obj]:
        ref = binding.get("roleRef") or {}
        kind, name = ref.get("kind"), ref.get("name", "")
        if kind == "ClusterRole":
            role = self.store.peek("clusterroles", "", name)
            missing = f'clusterrole.{RBAC_GROUP} "{name}" not found'
        elif kind == "Role" and namespace:
            role = self.store.peek("roles", namespace, name)
            missing = f'role.{RBAC_GROUP} "{name}" not found'
        else:
            return []
        if role is None:
            errors.append(missing)
            return []
        return list(role.get("rules") or [])


def _binds(binding: Obj, user: UserInfo, namespace: str) -> bool:
    """``appliesToUser`` for any subject of the binding (ServiceAccount subjects default to its namespace)."""
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
        if kind == "ServiceAccount":
            sa_namespace = subject.get("namespace") or namespace
            if sa_namespace and user.name == f"system:serviceaccount:{sa_namespace}:{name}":
                return True
    return False


def _path_matches(rule_path: str, path: str) -> bool:
    if rule_path == "*" or rule_path == path:
        return True
    return rule_path.endswith("*") and path.startswith(rule_path[:-1])


def _rule_allows(rule: Obj, attrs: Attributes) -> bool:
    """``RuleAllows`` of the RBAC authorizer."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        return any(_path_matches(p, attrs.path) for p in rule.get("nonResourceURLs") or [])
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.api_group not in groups:
        return False
    combined = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    if not any(r == "*" or r == combined or (attrs.subresource and r == f"*/{attrs.subresource}")
               for r in rule.get("resources") or []):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names
