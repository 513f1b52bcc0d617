"""The pod spec → ``podman run`` translation, without starting anything."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from tests.rehearsal.podspec import (
    SERVICE_ACCOUNT_DIR,
    ApiServer,
    Objects,
    Pod,
    PodSpecError,
    expand,
    quantity,
    run_args,
)

SECRET = {"kind": "Secret", "metadata": {"name": "creds"},
          "data": {"KEY": base64.b64encode(b"s3cret").decode()}, "stringData": {"USER": "u"}}
CONFIG = {"kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"MODE": "fast"}}
SERVICE = {"kind": "Service", "metadata": {"name": "primer-redis", "namespace": "ns"},
           "spec": {"ports": [{"name": "redis", "port": 6379}]}}
HEADLESS = {"kind": "Service", "metadata": {"name": "primer-minio-hl", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"port": 9000}]}}
OBJECTS = Objects([SECRET, CONFIG, SERVICE, HEADLESS])


def _spec(**container) -> dict:
    return {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10002,
                            "fsGroup": 10003},
        "containers": [{"name": "main", "image": "img:1", **container}],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "creds", "secret": {"secretName": "creds",
                                                 "items": [{"key": "KEY", "path": "key"}]}}],
    }


def _pod(tmp_path, spec, **kw) -> Pod:
    return Pod(spec, "web-0", "ns", tmp_path, {"primer-redis.ns.svc": "127.0.0.1"}, **kw)


def _env(args: list[str]) -> dict[str, str]:
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--env"]
    return dict(p.split("=", 1) for p in pairs)


def test_env_resolves_secrets_config_maps_field_refs_and_service_links(tmp_path):
    spec = _spec(
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                 {"secretRef": {"name": "absent", "optional": True}}],
        env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}},
             {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "USER"}}},
             {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                "key": "MODE"}}},
             {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "URL", "value": "redis://$(USER):$(KEY)@h/$(NOPE)$$"}])
    env = _env(run_args(_pod(tmp_path, spec, extra_env=[{"name": "RANK", "value": "1"}]),
                        "main", OBJECTS))
    assert env["KEY"] == "s3cret" and env["USER"] == "u" and env["MODE"] == "fast"
    assert env["CM_MODE"] == "fast" and env["POD"] == "web-0" and env["RANK"] == "1"
    assert env["URL"] == "redis://u:s3cret@h/$(NOPE)$"
    # The kubelet's Service links (they can shadow PRIMER_* settings: the rehearsal keeps them).
    assert env["PRIMER_REDIS_PORT"] == "tcp://127.0.0.1:6379"
    assert env["PRIMER_REDIS_SERVICE_PORT_REDIS"] == "6379"
    assert not any(k.startswith("PRIMER_MINIO_HL") for k in env)
    spec["enableServiceLinks"] = False
    assert "PRIMER_REDIS_PORT" not in _env(run_args(_pod(tmp_path, spec), "main", OBJECTS))


def test_missing_secret_key_is_named(tmp_path):
    spec = _spec(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                     "key": "NOPE"}}}])
    with pytest.raises(PodSpecError, match="Secret 'creds' has no key 'NOPE'.*env X"):
        run_args(_pod(tmp_path, spec), "main", OBJECTS)
    spec = _spec(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone",
                                                                     "key": "K"}}}])
    with pytest.raises(PodSpecError, match="Secret 'gone' is referenced"):
        run_args(_pod(tmp_path, spec), "main", OBJECTS)


def test_security_limits_command_and_volumes(tmp_path):
    spec = _spec(
        command=["celery", "-A", "$(APP)"], args=["--queue", "q"],
        env=[{"name": "APP", "value": "primer.app"}],
        resources={"limits": {"cpu": "500m", "memory": "512Mi"}},
        securityContext={"runAsGroup": 20000, "readOnlyRootFilesystem": True,
                         "allowPrivilegeEscalation": False,
                         "capabilities": {"drop": ["ALL"], "add": ["SETUID"]}},
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"},
                      {"name": "shm", "mountPath": "/dev/shm"},
                      {"name": "creds", "mountPath": "/etc/creds"},
                      {"name": "data", "mountPath": "/data"}])
    args = run_args(_pod(tmp_path, spec), "main", OBJECTS, claims=["data"])
    joined = " ".join(args)
    assert "--user 10001:20000" in joined and "--group-add 10003" in joined
    assert "--cap-drop ALL --cap-add SETUID" in joined
    assert "--security-opt no-new-privileges" in joined
    # A read-only root without podman's own tmpfs mounts: only the pod's volumes are writable.
    assert "--read-only --read-only-tmpfs=false" in joined
    assert "--cpus 0.5" in joined and f"--memory {512 * 2**20}" in joined
    assert "--add-host primer-redis.ns.svc:127.0.0.1" in joined
    assert args[args.index("--entrypoint") + 1] == json.dumps(["celery"])
    assert args[-5:] == ["img:1", "-A", "primer.app", "--queue", "q"]
    assert f"--tmpfs /dev/shm:rw,mode=1777,size={64 * 2**20}" in joined
    assert f"--volume {tmp_path}/web-0/tmp:/tmp:rw" in joined
    assert stat.S_IMODE((tmp_path / "web-0" / "tmp").stat().st_mode) == 0o777
    assert f"--volume {tmp_path}/web-0/creds:/etc/creds:ro" in joined
    assert (tmp_path / "web-0" / "creds" / "key").read_text() == "s3cret"
    data = (tmp_path / "web-0" / "data").stat()
    assert data.st_gid == 10003 and data.st_mode & stat.S_ISGID


def test_what_cannot_run_here_is_refused(tmp_path):
    gpu = _spec(resources={"limits": {"nvidia.com/gpu": "1"}})
    with pytest.raises(PodSpecError, match="nvidia.com/gpu"):
        run_args(_pod(tmp_path, gpu), "main", OBJECTS)
    unknown = _spec(volumeMounts=[{"name": "nfs", "mountPath": "/x"}])
    with pytest.raises(PodSpecError, match="volumeMount 'nfs' has no volume"):
        run_args(_pod(tmp_path, unknown), "main", OBJECTS)
    with pytest.raises(PodSpecError, match="no container 'sidecar'"):
        run_args(_pod(tmp_path, _spec()), "sidecar", OBJECTS)


def test_quantities_and_expansion():
    assert quantity("250m") == 0.25 and quantity("2") == 2 and quantity("1Gi") == 2**30
    assert quantity("1G") == 10**9
    with pytest.raises(PodSpecError, match="quantity '1 GB'"):
        quantity("1 GB")
    assert expand("$(A)-$(B)-$$(A)", {"A": "x"}) == "x-$(B)-$(A)"


def _mounts(args: list[str]) -> dict[str, str]:
    pairs = [args[i + 1].rsplit(":", 2) for i, a in enumerate(args) if a == "--volume"]
    return {target: f"{host}:{mode}" for host, target, mode in pairs}


def test_an_api_server_reaches_every_pod_and_credentials_only_the_automounting_ones(tmp_path):
    api = ApiServer("127.0.0.1", 6443, "-----BEGIN CERTIFICATE-----\nx\n", "tok")
    account = {"kind": "ServiceAccount", "metadata": {"name": "quiet"},
               "automountServiceAccountToken": False}
    objects = Objects([*OBJECTS.items, account])
    default = _spec()  # no field: the "default" account automounts
    opted_out = {**_spec(), "automountServiceAccountToken": False}
    by_account = {**_spec(), "serviceAccountName": "quiet"}
    pod_wins = {**_spec(), "serviceAccountName": "quiet", "automountServiceAccountToken": True}
    for spec, mounted in ((default, True), (opted_out, False), (by_account, False),
                          (pod_wins, True)):
        pod = Pod(spec, "op-0", "ns", tmp_path / str(id(spec)), api=api)
        args = run_args(pod, "main", objects)
        env = _env(args)
        assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"  # the address: always
        assert env["KUBERNETES_SERVICE_PORT"] == "6443"
        mount = _mounts(args).get(SERVICE_ACCOUNT_DIR)
        assert (mount is not None) == mounted, (spec, mount)
        if mounted:
            host, mode = mount.rsplit(":", 1)
            files = {p.name: p for p in Path(host).iterdir()}
            assert mode == "ro" and sorted(files) == ["ca.crt", "namespace", "token"]
            assert files["token"].read_text() == "tok"
            assert files["namespace"].read_text() == "ns"
            assert files["ca.crt"].read_text() == api.ca_pem
            assert files["token"].stat().st_gid == 10003  # the fsGroup, as the kubelet sets
    # without an API server nothing of it appears (the embedded release has none)
    args = run_args(_pod(tmp_path, default), "main", objects)
    assert SERVICE_ACCOUNT_DIR not in _mounts(args)
    assert "KUBERNETES_SERVICE_HOST" not in _env(args)
