"""A rendered pod spec as ``podman run`` arguments, as the kubelet would run its container.

What carries over, exactly: the image; ``command``/``args`` (Kubernetes' ENTRYPOINT/CMD rules
and ``$(VAR)`` expansion); the env (values, Secret and ConfigMap keys resolved from the rendered
objects, ``envFrom``, the downward API, and the Service links the kubelet adds); user, group
and supplemental groups; a user namespace (``hostUsers: false``), an unmasked ``/proc``,
AppArmor unconfined; dropped/added capabilities, no-new-privileges, privileged; a read-only
root with *no* extra tmpfs (podman adds /tmp, /run… by default; the kubelet does not); CPU and
memory limits; emptyDir, PVC, Secret and ConfigMap volumes (host folders, fsGroup-owned where
Kubernetes would make them so); the pod name as host name; given an API server, its address in
``KUBERNETES_SERVICE_*`` and, where the pod automounts it, the service account's token, CA and
namespace at the path every client library reads them from.

What cannot: networking is the host's (Service names are mapped to an address with
``--add-host``), probes are the caller's, and GPUs are refused.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "m": 1e-3, "": 1}
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(ValueError):
    """The pod spec asks for something the rehearsal cannot give it (named in the message)."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "512Mi", "1Gi") as a number."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise PodSpecError(f"quantity {value!r}: not a Kubernetes quantity")
    return float(match[1]) * _SUFFIX[match[2] or ""]


@dataclass(frozen=True)
class Objects:
    """The rendered objects (``helm template`` output, a dry-run's YAML), looked up by kind."""

    items: list[dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.items:
            if obj and obj.get("kind") == kind and obj["metadata"]["name"] == name:
                return obj
        raise PodSpecError(f"{kind} {name!r} is referenced but not among the rendered objects")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.items if o and o.get("kind") == kind]

    def data(self, kind: str, name: str) -> dict[str, str]:
        """A Secret's or ConfigMap's keys as text (``data`` decoded, ``stringData`` merged)."""
        obj = self.get(kind, name)
        out = dict(obj.get("data") or {})
        if kind == "Secret":
            out = {k: base64.b64decode(v).decode() for k, v in out.items()}
        out.update(obj.get("stringData") or {})
        return out


#: Where the kubelet mounts a pod's service account credentials (``load_incluster_config``).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class ApiServer:
    """The Kubernetes API as the kubelet presents it to a pod: the ``kubernetes`` Service's
    address (in every container's env, service links or not) and the credentials of the pod's
    service account (token, the cluster's CA)."""

    host: str
    port: int
    ca_pem: str
    token: str

    def env(self) -> dict[str, str]:
        url = f"tcp://{self.host}:{self.port}"
        base = f"KUBERNETES_PORT_{self.port}_TCP"
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.port), "KUBERNETES_PORT": url,
                base: url, f"{base}_PROTO": "tcp", f"{base}_PORT": str(self.port),
                f"{base}_ADDR": self.host}


@dataclass
class Pod:
    """One pod to run: its spec, its identity, and where its volumes live on this machine."""

    spec: dict[str, Any]
    name: str
    namespace: str
    volumes_dir: Path
    """Host folder for this pod's emptyDir/PVC/Secret/ConfigMap volumes (made as needed)."""
    hosts: Mapping[str, str] = field(default_factory=dict)
    """Host names (Service names) → address, as ``--add-host``."""
    extra_env: list[dict[str, Any]] = field(default_factory=list)
    """Variables a controller appends to the container (the Training Operator's PET_*…)."""
    api: ApiServer | None = None
    """The cluster's API server, if the rehearsal has one (else pods see none, as before)."""


def service_links(objects: Objects, namespace: str, address: str) -> dict[str, str]:
    """The variables the kubelet adds for each Service of the namespace (enableServiceLinks)."""
    env = {}
    for svc in objects.of_kind("Service"):
        meta, spec = svc["metadata"], svc.get("spec", {})
        if meta.get("namespace", namespace) != namespace or spec.get("clusterIP") == "None":
            continue
        prefix = meta["name"].upper().replace("-", "_")
        ports = spec.get("ports") or []
        if not ports:
            continue
        env[f"{prefix}_SERVICE_HOST"] = address
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for i, p in enumerate(ports):
            proto = p.get("protocol", "TCP")
            if p.get("name"):
                env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(
                    p["port"])
            base = f"{prefix}_PORT_{p['port']}_{proto}"
            url = f"{proto.lower()}://{address}:{p['port']}"
            env.update({base: url, f"{base}_PROTO": proto.lower(), f"{base}_PORT": str(p["port"]),
                        f"{base}_ADDR": address})
            if i == 0:
                env[f"{prefix}_PORT"] = url
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, unknown kept, ``$$`` → ``$``."""
    def sub(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])
    return _VAR_REF.sub(sub, text)


def _field_ref(path: str, pod: Pod, address: str) -> str:
    values = {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
              "status.podIP": address, "status.hostIP": address, "spec.nodeName": "rehearsal",
              "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default")}
    if path not in values:
        raise PodSpecError(f"fieldRef {path!r}: not supported by the rehearsal")
    return values[path]


def container_env(pod: Pod, container: dict[str, Any], objects: Objects,
                  address: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it (later entries win)."""
    env: dict[str, str] = dict(pod.api.env()) if pod.api else {}
    if pod.spec.get("enableServiceLinks", True):
        env.update(service_links(objects, pod.namespace, address))
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if key in source:
                ref = source[key]
                try:
                    data = objects.data(kind, ref["name"])
                except PodSpecError:
                    if ref.get("optional"):
                        continue
                    raise
                env.update({prefix + k: v for k, v in data.items()})
    for var in [*(container.get("env") or []), *pod.extra_env]:
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = _field_ref(source["fieldRef"]["fieldPath"], pod, address)
            continue
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                data = objects.data(kind, ref["name"])
                if ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    raise PodSpecError(f"{kind} {ref['name']!r} has no key {ref['key']!r} "
                                       f"(env {var['name']} of container {container['name']})")
                env[var["name"]] = data[ref["key"]]
                break
        else:
            raise PodSpecError(f"env {var['name']}: valueFrom {sorted(source)} not supported")
    return env


def _volume_dir(pod: Pod, name: str) -> Path:
    path = pod.volumes_dir / pod.name / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _volume_file(target: Path, text: str, mode: int, fs_group: int | None) -> None:
    """One file of a Secret, ConfigMap or projected volume, as the kubelet writes it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    if fs_group is not None:
        os.chown(target, 0, fs_group)


def _materialize_volume(pod: Pod, volume: dict[str, Any], objects: Objects,
                        fs_group: int | None) -> tuple[Path, bool]:
    """A pod volume as a host folder; returns (folder, read-only)."""
    path = _volume_dir(pod, volume["name"])
    if "emptyDir" in volume:
        path.chmod(0o777)  # what the kubelet makes an emptyDir
        return path, False
    for kind, key, ref in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
        if key in volume:
            spec = volume[key]
            data = objects.data(kind, spec[ref])
            items = spec.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                _volume_file(path / item["path"], data[item["key"]],
                             item.get("mode", spec.get("defaultMode", 0o644)), fs_group)
            return path, True
    if "persistentVolumeClaim" in volume:
        return _claim_dir(path, fs_group), False
    raise PodSpecError(f"volume {volume['name']!r}: {sorted(set(volume) - {'name'})} not "
                       "supported by the rehearsal")


def automounts_token(pod: Pod, objects: Objects) -> bool:
    """The pod's own ``automountServiceAccountToken`` wins; else its service account's; else
    true (Kubernetes' default)."""
    if "automountServiceAccountToken" in pod.spec:
        return bool(pod.spec["automountServiceAccountToken"])
    name = pod.spec.get("serviceAccountName") or "default"
    try:
        account = objects.get("ServiceAccount", name)
    except PodSpecError:  # "default", or one made outside the chart
        return True
    return bool(account.get("automountServiceAccountToken", True))


def _service_account_dir(pod: Pod, fs_group: int | None) -> Path:
    """The projected token volume: token, ca.crt and namespace, read-only, 0644 (fsGroup-owned
    where the pod has one), as the kubelet writes it."""
    assert pod.api is not None
    path = _volume_dir(pod, "kube-api-access")
    for name, text in (("token", pod.api.token), ("ca.crt", pod.api.ca_pem),
                       ("namespace", pod.namespace)):
        _volume_file(path / name, text, 0o644, fs_group)
    return path


def _claim_dir(path: Path, fs_group: int | None) -> Path:
    # A fresh volume with fsGroup: group-owned, group-writable, setgid (what the kubelet does).
    if fs_group is not None:
        os.chown(path, 0, fs_group)
        path.chmod(0o2775)
    return path


#: The host ids a user-namespaced pod's ids map to (``hostUsers: false``): an unprivileged range,
#: as the kubelet picks one per pod.
USERNS_BASE, USERNS_SIZE = 400000, 65536


def run_args(pod: Pod, container_name: str, objects: Objects, *, image: str | None = None,
             address: str = "127.0.0.1", claims: Iterable[str] = (),
             command: list[str] | None = None) -> list[str]:
    """``podman run`` options, image and arguments for one container of ``pod``.

    ``claims`` names the volumes a StatefulSet's volumeClaimTemplates provide (fresh folders).
    ``image`` replaces the container's image (a local stand-in for one no registry can give);
    ``command`` the container's command and args (another program in the same container).
    """
    spec = pod.spec
    container = next((c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
                      if c["name"] == container_name), None)
    if container is None:
        raise PodSpecError(f"pod {pod.name}: no container {container_name!r}")
    pod_sc = spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    env = container_env(pod, container, objects, address)
    args = ["--hostname", pod.name, "--network", "host"]
    for host, ip in pod.hosts.items():
        args += ["--add-host", f"{host}:{ip}"]

    if spec.get("hostUsers") is False:  # the pod's own user namespace
        mapping = f"0:{USERNS_BASE}:{USERNS_SIZE}"
        args += ["--uidmap", mapping, "--gidmap", mapping]
    if sc.get("procMount") == "Unmasked":
        args += ["--security-opt", "unmask=/proc/*"]
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        args += ["--security-opt", "apparmor=unconfined"]
    uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
    if sc.get("runAsNonRoot") and uid == 0:
        raise PodSpecError(f"pod {pod.name}: runAsNonRoot with runAsUser 0")
    if uid is not None:
        args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    for group in [pod_sc.get("fsGroup"), *(pod_sc.get("supplementalGroups") or [])]:
        if group is not None:
            args += ["--group-add", str(group)]
    caps = sc.get("capabilities") or {}
    args += [a for cap in caps.get("drop") or [] for a in ("--cap-drop", cap)]
    args += [a for cap in caps.get("add") or [] for a in ("--cap-add", cap)]
    if sc.get("privileged"):
        args.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]

    limits = (container.get("resources") or {}).get("limits") or {}
    for key in limits:
        if key not in ("cpu", "memory", "ephemeral-storage"):
            raise PodSpecError(f"container {container_name}: limit {key!r} cannot be given here")
    if "cpu" in limits:
        args += ["--cpus", f"{quantity(limits['cpu']):g}"]
    if "memory" in limits:
        args += ["--memory", str(int(quantity(limits["memory"])))]

    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    fs_group = pod_sc.get("fsGroup")
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name in volumes:
            host, read_only = _materialize_volume(pod, volumes[name], objects, fs_group)
        elif name in claims:
            host, read_only = _claim_dir(_volume_dir(pod, name), fs_group), False
        else:
            raise PodSpecError(f"container {container_name}: volumeMount {name!r} has no volume")
        if mount.get("subPath"):
            host = host / mount["subPath"]
        medium = (volumes.get(name, {}).get("emptyDir") or {}).get("medium")
        ro = read_only or mount.get("readOnly", False)
        if medium == "Memory":
            size = volumes[name]["emptyDir"].get("sizeLimit")
            opts = "rw,mode=1777" + (f",size={int(quantity(size))}" if size else "")
            args += ["--tmpfs", f"{mount['mountPath']}:{opts}"]
        else:
            args += ["--volume", f"{host}:{mount['mountPath']}:{'ro' if ro else 'rw'}"]

    if pod.api and automounts_token(pod, objects):
        args += ["--volume", f"{_service_account_dir(pod, fs_group)}:{SERVICE_ACCOUNT_DIR}:ro"]

    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    if command is None:
        command = [expand(c, env) for c in container.get("command") or []]
        cmd_args = [expand(a, env) for a in container.get("args") or []]
    else:
        cmd_args = []
    if command:
        args += ["--entrypoint", json.dumps(command[:1])]
        cmd_args = command[1:] + cmd_args
    if container.get("workingDir"):
        args += ["--workdir", container["workingDir"]]
    return [*args, image or container["image"], *cmd_args]
