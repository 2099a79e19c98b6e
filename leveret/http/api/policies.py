"""Handlers of ``/api/policies``: list, show, set and clear policies (setting needs the ``policymaker`` tag or
``administrator``; the route table says so). The core applies them to matching queues and exchanges."""

from __future__ import annotations

from aiohttp import web

from leveret.core import errors
from leveret.management.context import Management
from leveret.management.validation import policy_from
from leveret.management.views import policy_info

from .call import Call, reply


async def list_policies(api: Management, call: Call) -> web.Response:
    return reply([policy_info(p) for v in call.visible_vhosts(api) for p in v.policies.values()])


async def get_policy(api: Management, call: Call) -> web.Response:
    vhost = api.vhost(call.params["vhost"])
    policy = vhost.policies.get(call.params["name"])
    if policy is None:
        raise errors.NotFound(f"no policy '{call.params['name']}' in vhost '{vhost.name}'")
    return reply(policy_info(policy))


async def put_policy(api: Management, call: Call) -> web.Response:
    body = await call.body()
    vhost = api.vhost(call.params["vhost"])
    policy = policy_from(body, vhost.name, call.params["name"])
    created = policy.name not in vhost.policies
    api.broker.set_policy(policy)
    return reply(None, 201 if created else 204)


async def delete_policy(api: Management, call: Call) -> web.Response:
    api.broker.clear_policy(call.params["vhost"], call.params["name"])
    return reply(None, 204)
