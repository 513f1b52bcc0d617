"""The gateway: an HTTP API to submit and watch runs.

``app.py`` (FastAPI, ``uvicorn services.gateway.app:app``) takes run specs of
:mod:`primer.runs`. In embedded mode it drives each run's planner over Celery itself
(``embedded.py``: records in Redis, a reconciler thread); in cluster mode it creates the
``primer.dev`` custom resources the operator drives and reads their status (``cluster.py``).
``cli.py`` is the client: ``primer runs submit|list|get --gateway URL``, the same in both.
"""
