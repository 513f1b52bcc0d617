"""The gateway: an HTTP API to submit and watch runs in cluster mode.

``app.py`` (FastAPI, ``uvicorn services.gateway.app:app``) stores run records in Redis and
enqueues each run as one ``primer.run_unit`` task whose function is
:func:`services.gateway.driver.run_command`; a worker executes the same ``primer`` command a
laptop would. ``cli.py`` is the client: ``primer runs submit|list|get --gateway URL``.
"""
