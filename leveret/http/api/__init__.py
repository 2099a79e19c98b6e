"""The management HTTP API, shaped like RabbitMQ's management plugin (``/api/...``) so its tools work.

One module an idea:

- ``app.py``: :class:`ManagementAPI`, the route table (each endpoint and its handler) and the one entry point
  (authenticate, route, authorise, translate errors through ``leveret/errormap.py``); ``/metrics``.
- ``routing.py``: a route's row and matching raw paths (``%2F`` for the vhost ``/``);
  ``auth.py``: HTTP basic login and RabbitMQ's tag rules; ``call.py``: the request (:class:`Call`) and
  :func:`reply`.
- ``context.py``: :class:`Management`, what every handler shares (lookups that 404, connections, rates,
  waiting for the store); ``views.py``: the JSON shapes; ``validation.py``: body validators and HTTPFailure.
- Handlers per resource: ``overview.py`` (overview, whoami, nodes, health, OpenAPI), ``connections.py``
  (connections, channels, consumers), ``vhosts.py``, ``users.py`` (users, permissions), ``limits.py``,
  ``queues.py``, ``exchanges.py``, ``bindings.py``, ``messages.py`` (publish, get), ``policies.py``,
  ``definitions.py`` (export, import), ``tracking.py`` (message tracking, task status).

The control socket (``leveret/server/control.py``) lists and validates through ``context``, ``views``,
``validation`` and ``definitions``, so ``leveret ctl`` and the API cannot drift apart.
"""
