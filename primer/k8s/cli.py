"""``primer train submit|status|logs|delete``: training as a Kubeflow PyTorchJob.

The object comes from :func:`primer.k8s.build_pytorchjob` (the chart renders the same one);
it is sent with the ``kubeflow-training`` SDK (``TrainingClient.create_job``), which reads
the kubeconfig (``--kubeconfig`` / ``KUBECONFIG`` / ``~/.kube/config``) or, inside a pod,
the in-cluster service account::

    primer train submit --preset phi1 --nodes 1 --gpus-per-node 8 \\
        --data s3://primer/runs/r1/shards --output s3://primer/runs/r1/train \\
        --image ghcr.io/primer-ml/primer-train:0.1.0 --s3-endpoint http://primer-minio:9000
    primer train submit … --dry-run        # print the YAML, contact nothing
    primer train status NAME / logs NAME [--follow] / delete NAME
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer

from primer.k8s.pytorchjob import KIND, TrainingJobSpec, build_pytorchjob, to_yaml

jobs_app = typer.Typer(help="Training on Kubernetes as Kubeflow PyTorchJobs (kubeflow.org/v1).",
                       no_args_is_help=True)

Namespace = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="Namespace (default: the kubeconfig context's).")]
Kubeconfig = Annotated[Path | None, typer.Option(
    "--kubeconfig", envvar="KUBECONFIG", dir_okay=False,
    help="Kubeconfig file (default: ~/.kube/config, or in-cluster). Env: KUBECONFIG.")]
Context = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]


def _client(kubeconfig: Path | None, context: str | None, namespace: str | None):
    """A ``TrainingClient`` for PyTorchJobs and the namespace to use (the SDK is slow to import).

    The SDK's own default namespace is computed once at import time from ``~/.kube/config``,
    so the namespace is resolved here, from the kubeconfig actually used.
    """
    from kubeflow.training import TrainingClient

    config_file = str(kubeconfig) if kubeconfig else None
    try:
        client = TrainingClient(config_file=config_file, context=context, job_kind=KIND)
        namespace = namespace or _default_namespace(config_file, context)
    except Exception as e:  # kubernetes.config raises its own ConfigException and OSErrors
        _fail(CommandError(f"cannot load the Kubernetes config: {e}"))
    return client, namespace


def _default_namespace(config_file: str | None, context: str | None) -> str:
    """The in-cluster pod's namespace, else the kubeconfig context's, else ``default``."""
    in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if config_file is None and in_cluster.is_file():
        return in_cluster.read_text().strip()
    from kubernetes import config

    contexts, current = config.list_kube_config_contexts(config_file)
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


class CommandError(click.ClickException):
    """A user-fixable failure: one ``error:`` line on stderr and exit code 1 (or 2 for bad input).

    Shown by the command itself, so the message is the same under ``primer train`` and when
    the Typer app is invoked on its own (tests, other hosts).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _fail(e: click.ClickException) -> NoReturn:
    typer.echo(f"error: {e.format_message()}", err=True)
    raise typer.Exit(e.exit_code)


def _sdk_error(action: str, name: str, namespace: str, e: Exception) -> click.ClickException:
    """The SDK wraps API errors in RuntimeError/TimeoutError; keep the part a person needs."""
    text = str(e)
    if "AlreadyExists" in text or "(409)" in text:
        return CommandError(f"{KIND} {namespace}/{name} already exists: choose another "
                                    f"--name or `primer train delete {name}` first")
    if "(404)" in text or "NotFound" in text:
        return CommandError(f"{KIND} {namespace}/{name} not found (is the Training "
                                    "Operator 1.9.x installed, and is this the right namespace?)")
    return CommandError(f"cannot {action} {KIND} {namespace}/{name}: {text}")


def to_sdk_model(obj: dict[str, Any]):
    """The builder's dict as the SDK's ``KubeflowOrgV1PyTorchJob`` (what ``create_job`` takes)."""
    from kubeflow.training.api_client import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    return ApiClient().deserialize(FakeResponse(obj), "KubeflowOrgV1PyTorchJob")


@jobs_app.command("submit")
def submit(
    data: Annotated[str, typer.Option(help="Packed shards, s3://bucket/prefix.")],
    output: Annotated[str, typer.Option(help="Run output (checkpoints), s3://bucket/prefix.")],
    image: Annotated[str, typer.Option(help="Training image with a pinned tag or digest.")],
    preset: Annotated[str, typer.Option(help="Training preset (phi1, phi1_small, …).")] = "phi1",
    nodes: Annotated[int, typer.Option(min=1, help="Pods: 1 Master + N-1 Workers.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(min=0, help="GPUs (= processes) per pod.")] = 8,
    steps: Annotated[int | None, typer.Option(min=1, help="Stop after N steps.")] = None,
    name: Annotated[str | None, typer.Option(help="Job name (default: <preset>-<UTC time>).")]
    = None,
    namespace: Namespace = None,
    s3_secret: Annotated[str, typer.Option(help="Secret with AWS_ACCESS_KEY_ID and "
                                           "AWS_SECRET_ACCESS_KEY (the chart's training user: "
                                           "<release>-primer-s3-training).")]
    = "primer-s3-training",
    s3_endpoint: Annotated[str | None, typer.Option(
        help="PRIMER_S3_ENDPOINT inside the pods, e.g. http://primer-minio:9000.")] = None,
    cpu: Annotated[str, typer.Option(help="CPU per pod.")] = "8",
    memory: Annotated[str, typer.Option(help="Memory per pod.")] = "64Gi",
    shm_size: Annotated[str, typer.Option(help="Memory-backed /dev/shm size.")] = "16Gi",
    backoff_limit: Annotated[int, typer.Option(min=0, help="Pod failures tolerated.")] = 3,
    clean_pod_policy: Annotated[str, typer.Option(help="None, Running or All.")] = "Running",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the YAML; send nothing.")]
    = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Submit a training run as a PyTorchJob; a lost pod resumes from the last checkpoint."""
    if name is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        name = f"{preset.replace('_', '-').lower()}-{stamp}"
    try:  # bad input fails here, before any cluster is contacted
        spec = TrainingJobSpec(
            name=name, image=image, data=data, output=output, preset=preset, nodes=nodes,
            gpus_per_node=gpus_per_node, steps=steps, namespace=namespace, s3_secret=s3_secret,
            s3_endpoint=s3_endpoint, cpu=cpu, memory=memory, shm_size=shm_size,
            backoff_limit=backoff_limit, clean_pod_policy=clean_pod_policy)
    except ValueError as e:
        _fail(CommandError(str(e), exit_code=2))
    if not dry_run:
        client, namespace = _client(kubeconfig, context, namespace)
        spec = dataclasses.replace(spec, namespace=namespace)
    job = build_pytorchjob(spec)
    if dry_run:
        typer.echo(to_yaml(job), nl=False)
        return
    try:
        client.create_job(job=to_sdk_model(job), namespace=namespace)
    except (RuntimeError, TimeoutError) as e:
        _fail(_sdk_error("create", name, namespace, e))
    typer.echo(f"{KIND} {namespace}/{name} created; follow it with: primer train logs {name} "
               "--follow")


@jobs_app.command("status")
def status(name: str, namespace: Namespace = None, kubeconfig: Kubeconfig = None,
           context: Context = None) -> None:
    """Show a job's conditions (Created, Running, Restarting, Succeeded, Failed)."""
    client, namespace = _client(kubeconfig, context, namespace)
    try:
        job = client.get_job(name, namespace=namespace)
    except (RuntimeError, TimeoutError) as e:
        _fail(_sdk_error("get", name, namespace, e))
    conditions = (job.status.conditions if job.status else None) or []
    current = next((c.type for c in reversed(conditions) if c.status == "True"), "Pending")
    typer.echo(f"{KIND} {namespace}/{name}: {current}")
    for c in conditions:
        typer.echo(f"  {c.type:<11} {c.status:<5} {c.reason or ''} {c.message or ''}".rstrip())
    for replica, rs in sorted(((job.status.replica_statuses if job.status else None)
                               or {}).items()):
        typer.echo(f"  {replica}: active={rs.active or 0} succeeded={rs.succeeded or 0} "
                   f"failed={rs.failed or 0}")


@jobs_app.command("logs")
def logs(name: str,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the logs.")] = False,
         all_pods: Annotated[bool, typer.Option("--all", help="Workers too, not only the "
                                                "Master.")] = False,
         namespace: Namespace = None, kubeconfig: Kubeconfig = None,
         context: Context = None) -> None:
    """Print the training container's logs (the Master's, or every pod's with --all)."""
    client, namespace = _client(kubeconfig, context, namespace)
    try:
        pod_logs, _ = client.get_job_logs(name, namespace=namespace, is_master=not all_pods,
                                          follow=follow)
    except (RuntimeError, TimeoutError) as e:
        _fail(_sdk_error("read logs of", name, namespace, e))
    if follow:
        return  # the SDK printed the stream as it came
    if not pod_logs:
        typer.echo(f"no running pods of {KIND} {namespace}/{name} yet", err=True)
    for pod, text in pod_logs.items():
        typer.echo(f"==> {pod} <==")
        typer.echo(text, nl=not text.endswith("\n"))


@jobs_app.command("delete")
def delete(name: str, namespace: Namespace = None, kubeconfig: Kubeconfig = None,
           context: Context = None) -> None:
    """Delete a job and its pods (checkpoints in S3 stay)."""
    client, namespace = _client(kubeconfig, context, namespace)
    try:
        client.delete_job(name, namespace=namespace)
    except (RuntimeError, TimeoutError) as e:
        _fail(_sdk_error("delete", name, namespace, e))
    typer.echo(f"{KIND} {namespace}/{name} deleted")
