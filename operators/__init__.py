"""The Primer operator (kopf): CurationRun, GenerationRun, TrainingRun and EvaluationRun
custom resources (``primer.dev/v1alpha1``) reconciled into Celery work units, PyTorchJobs
and evaluation Jobs. Importing this package registers every handler::

    kopf run --standalone --namespace primer -m operators          # what the chart runs
    kopf run --standalone --namespace default --verbose -m operators   # against a kubeconfig

Settings come from the environment (``operators/config.py``); RBAC in
``charts/primer/templates/operator-role.yaml`` is exactly what the handlers call.
"""

from operators import evaluation, queue_runs, settings, training

__all__ = ["evaluation", "queue_runs", "settings", "training"]
