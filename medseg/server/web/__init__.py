"""The HTTP side of ``medseg serve``: a dashboard, ``/api/`` JSON and ``/metrics``.

Starlette (ASGI routing, requests, responses) served by uvicorn in a thread of its own,
started and stopped with the service (``server.py``). Everything shown comes from the
same sources as ``medseg status`` (``medseg.server.status``); patient names and IDs only
with ``[web] show_patient = true``.
"""
