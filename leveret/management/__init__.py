"""The broker as its management tools see it, shared by the HTTP API (``leveret/http/api/``) and the control
socket (``leveret/server/control.py``, behind ``leveret ctl``), so the two list, look up and validate alike
and neither adapter imports the other:

- ``context.py``: :class:`Management`, lookups that raise NotFound, visible vhosts, client connections and
  listeners, waiting until the store has a change;
- ``views.py``: the JSON shapes of queues, exchanges, bindings, vhosts, users, permissions, policies, nodes,
  connections, channels, consumers (RabbitMQ's field names);
- ``validation.py``: body validators and :class:`HTTPFailure`, the refusal with a status;
- ``definitions.py``: definitions export and import in RabbitMQ's format;
- ``rates.py``: message rates (``message_stats``) sampled when read.

Imports the core and the standard library only (no aiohttp). Core errors map to statuses in
``leveret/errormap.py``.
"""
