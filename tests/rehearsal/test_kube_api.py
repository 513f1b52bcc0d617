"""The rehearsal's API server without containers: the login a pod does (``load_incluster_config``
with the mounted token and CA, the address from ``KUBERNETES_SERVICE_*``) reaches kmock through
the TLS front, and a client holding another cluster's CA is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from tests.rehearsal.kube_api import NS, api_server, certificates


def _login(folder: Path, token: str, ca_pem: str, env: dict[str, str]) -> client.ApiClient:
    """What a pod's client does at start, with the files where the kubelet would put them."""
    folder.mkdir()
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_text(ca_pem)
    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=str(folder / "token"),
                          cert_filename=str(folder / "ca.crt"),
                          environ=env).load_and_set(configuration)
    configuration.retries = False
    return client.ApiClient(configuration)


def test_a_pod_logs_in_over_https_and_another_clusters_ca_is_refused(tmp_path):
    with api_server(tmp_path / "pki") as (cluster, api):
        assert api.host == "127.0.0.1" and api.port != int(cluster.url.rsplit(":", 1)[1])
        objects = client.CustomObjectsApi(_login(tmp_path / "sa", api.token, api.ca_pem,
                                                 api.env()))
        body = {"apiVersion": "primer.dev/v1alpha1", "kind": "CurationRun",
                "metadata": {"name": "r1", "namespace": NS}, "spec": {"input": "s3://b/x"}}
        objects.create_namespaced_custom_object("primer.dev", "v1alpha1", NS, "curationruns",
                                                body)
        listed = objects.list_namespaced_custom_object("primer.dev", "v1alpha1", NS,
                                                       "curationruns")
        assert [o["metadata"]["name"] for o in listed["items"]] == ["r1"]
        assert cluster.get("primer.dev/v1alpha1", "curationruns", "r1")["spec"] == body["spec"]

        other_ca = certificates(tmp_path / "other")[0].read_text()
        stranger = client.CustomObjectsApi(_login(tmp_path / "sa2", api.token, other_ca,
                                                  api.env()))
        with pytest.raises(ApiException, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.list_namespaced_custom_object("primer.dev", "v1alpha1", NS,
                                                   "curationruns")
