"""The management HTTP API, shaped like RabbitMQ's management plugin (``/api/...``) so its tools work.

One module an idea:

- ``app.py``: :class:`ManagementAPI`, the route table (each endpoint and its handler) and the one entry point
  (authenticate, route, authorise, translate errors through ``leveret/errormap.py``); ``/metrics``.
- ``routing.py``: a route's row and matching raw paths (``%2F`` for the vhost ``/``);
  ``auth.py``: HTTP basic login and RabbitMQ's tag rules; ``call.py``: the request (:class:`Call`) and
  :func:`reply`.
- Handlers per resource: ``overview.py`` (overview, whoami, nodes, health, OpenAPI), ``connections.py``
  (connections, channels, consumers), ``vhosts.py``, ``users.py`` (users, permissions), ``limits.py``,
  ``queues.py``, ``exchanges.py``, ``bindings.py``, ``messages.py`` (publish, get), ``policies.py``,
  ``definitions.py`` (export, import), ``tracking.py`` (message tracking, task status).

What handlers share with the control socket (lookups, JSON shapes, validators, the definitions format, rates)
is ``leveret/management/``; core errors map to statuses in ``leveret/errormap.py``.
"""
