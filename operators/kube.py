"""Calls to the Kubernetes API the handlers make, with kopf's error semantics.

Uses the ``kubernetes`` client's generic ``CustomObjectsApi`` for every kind (synchronous;
kopf runs sync handlers in its thread pool).
Every call maps failures the same way: 404 on delete is success (already gone), 409 on
create is success (created by an earlier attempt: creation is idempotent by name), 4xx that
a retry cannot fix is a PermanentError, anything else (5xx, connection refused, timeouts)
a TemporaryError with a delay.
"""

from __future__ import annotations

import functools
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from operators.config import RETRY_SECONDS

TIMEOUT = (5, 20)  # connect, read: a dead API server fails a call, never hangs a handler


@functools.cache
def api() -> client.ApiClient:
    """The in-cluster service account, else the kubeconfig (``KUBECONFIG``, ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _objects() -> client.CustomObjectsApi:
    # The generic client serves any group's namespaced resources (batch/v1 Jobs too) as plain
    # dicts, which is what the builders produce and the status readers expect.
    return client.CustomObjectsApi(api())


def _group_version(obj: dict[str, Any]) -> tuple[str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return group, version


def _fail(action: str, what: str, e: Exception) -> kopf.HandlerFatalError | kopf.TemporaryError:
    status = getattr(e, "status", None)
    if isinstance(e, ApiException) and status in (400, 403, 422):
        return kopf.PermanentError(f"cannot {action} {what}: {status} {e.reason}: {e.body}")
    return kopf.TemporaryError(f"cannot {action} {what} (will retry): {e}", delay=RETRY_SECONDS)


def create(obj: dict[str, Any], plural: str) -> None:
    """Create ``obj`` (namespaced; core, batch or a custom resource); exists already: fine."""
    group, version = _group_version(obj)
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        _objects().create_namespaced_custom_object(group, version, ns, plural, obj,
                                                   _request_timeout=TIMEOUT)
    except ApiException as e:
        if e.status != 409:
            raise _fail("create", f"{obj['kind']} {ns}/{name}", e) from e
    except (HTTPError, OSError) as e:
        raise _fail("create", f"{obj['kind']} {ns}/{name}", e) from e


def get(api_version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as a dict, or None if it does not exist."""
    group, _, version = api_version.rpartition("/")
    try:
        return _objects().get_namespaced_custom_object(group, version, namespace, plural, name,
                                                       _request_timeout=TIMEOUT)
    except ApiException as e:
        if e.status == 404:
            return None
        raise _fail("read", f"{plural} {namespace}/{name}", e) from e
    except (HTTPError, OSError) as e:
        raise _fail("read", f"{plural} {namespace}/{name}", e) from e


def delete(api_version: str, plural: str, namespace: str, name: str) -> None:
    """Delete the object and, in the background, what it owns (pods); gone already: fine."""
    group, _, version = api_version.rpartition("/")
    options = client.V1DeleteOptions(propagation_policy="Background")
    try:
        _objects().delete_namespaced_custom_object(group, version, namespace, plural, name,
                                                   body=options, _request_timeout=TIMEOUT)
    except ApiException as e:
        if e.status != 404:
            raise _fail("delete", f"{plural} {namespace}/{name}", e) from e
    except (HTTPError, OSError) as e:
        raise _fail("delete", f"{plural} {namespace}/{name}", e) from e


def create_owned(child: dict[str, Any], plural: str, owner: dict[str, Any]) -> None:
    """Create ``child`` owned by the run ``owner`` (deleted with it by the garbage
    collector); an existing child is fine, so a resumed handler can call this again."""
    kopf.append_owner_reference(child, owner=owner)
    create(child, plural)
