"""Drive a running agent from a backend: the platform's use cases with ``ContextClient``.

Start an agent with ``ContextPlugin`` in a room first (``examples/offline_agent.py`` needs no
model keys), then, with the same LiveKit settings::

    export LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
    export IMAGINEX_AGENT_CODE=OFFLINE01      # optional: which agent, if the room has several

    python examples/sender.py demo announcement   # maintenance announcement, waits for playout
    python examples/sender.py demo customer       # customer context when they join
    python examples/sender.py demo order          # order confirmation: context, then speech
    python examples/sender.py demo flash-sale     # fire-and-forget through the server API
    python examples/sender.py demo all

The sender joins as the identity ``backend`` (set ``IMAGINEX_SENDER_IDENTITY`` to change it),
which the agent must trust (``ContextPlugin(allowed_identities=["backend"])``). Alternatively
give both sides the same ``IMAGINEX_CONTEXT_SECRET`` (``ContextPlugin(secret=...)``): every
request is then signed and the identity does not matter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

from imaginex_context_plugin import (
    AckTimeoutError,
    ContextClient,
    ContextError,
    PlayoutTimeoutError,
    send_via_server_api,
)


@dataclass
class Customer:
    name: str
    tier: str
    last_order: str
    contact_method: str
    support_history: str


@dataclass
class Order:
    order_id: str
    total: str


async def announce_maintenance(client: ContextClient) -> None:
    """An announcement: queue behind what the agent is saying, and wait until it was heard."""
    try:
        result = await client.speak(
            "We will have scheduled maintenance tonight from 2 to 4 AM Eastern. "
            "Your service may be briefly interrupted.",
            wait_for_playout=True,
        )
    except PlayoutTimeoutError:
        print("announcement accepted, still playing")
        return
    how = "cut short by the user" if result.interrupted else "played in full"
    print(f"announcement {how} (speech {result.ack.data.speech_id})")


async def setup_customer_context(client: ContextClient, customer: Customer) -> None:
    """Customer context when they join. The key makes an update replace the old profile."""
    profile = (
        f"Customer: {customer.name}\n"
        f"Account type: {customer.tier}\n"
        f"Last purchase: {customer.last_order}\n"
        f"Preferred contact: {customer.contact_method}\n"
        f"Previous issues: {customer.support_history}"
    )
    ack = await client.add_context(profile, key="customer")
    print(f"customer context added ({ack.data.evicted or 0} older entries evicted)")


async def confirm_order(client: ContextClient, order: Order) -> None:
    """An order confirmation: the agent learns the order, then says it, exactly once."""
    await client.add_context(
        f"The customer just placed order #{order.order_id} for {order.total}.", key="last-order"
    )
    # a stable id: if the ack is lost and this runs again, the agent does not repeat itself
    request_id = f"order-confirmation-{order.order_id}"
    text = (
        f"Great news! Your order #{order.order_id} has been confirmed. "
        "You will receive a confirmation email shortly."
    )
    try:
        ack = await client.speak(text, id=request_id)
    except AckTimeoutError:
        # unknown whether it was said; resending with the same id is safe
        ack = await client.speak(text, id=request_id)
    note = " (already said by an earlier attempt)" if ack.duplicate else ""
    print(f"order confirmation scheduled{note}")


async def flash_sale_without_joining(room: str, agent_code: str | None) -> None:
    """Fire-and-forget through LiveKit's server API: no participant, and so no ack."""
    result = await send_via_server_api(
        {"type": "speak", "message": "Flash sale! 50% off all premium plans for two hours!"},
        room=room,
        agent_code=agent_code,
    )
    print(f"flash sale sent to {result.destination_identity} (acknowledged: {result.acknowledged})")


async def main(room: str, use_case: str) -> int:
    agent_code = os.getenv("IMAGINEX_AGENT_CODE") or None
    if use_case == "flash-sale":
        await flash_sale_without_joining(room, agent_code)
        return 0
    async with await ContextClient.connect(
        room=room,
        identity=os.getenv("IMAGINEX_SENDER_IDENTITY", "backend"),
        agent_code=agent_code,
        secret=os.getenv("IMAGINEX_CONTEXT_SECRET") or None,
    ) as client:
        if use_case in ("customer", "all"):
            await setup_customer_context(
                client,
                Customer(
                    name="John Smith",
                    tier="Premium (3 years)",
                    last_order="Noise-cancelling headphones, January 10",
                    contact_method="email",
                    support_history="Billing issue #12345, resolved",
                ),
            )
        if use_case in ("order", "all"):
            await confirm_order(client, Order(order_id="A-1042", total="$129.00"))
        if use_case in ("announcement", "all"):
            await announce_maintenance(client)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("room", help="The room the agent is in.")
    parser.add_argument(
        "use_case",
        choices=["announcement", "customer", "order", "flash-sale", "all"],
        nargs="?",
        default="all",
    )
    args = parser.parse_args()
    try:
        sys.exit(asyncio.run(main(args.room, args.use_case)))
    except ContextError as exc:
        print(f"error: {exc.code.value}: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except ValueError as exc:  # missing LIVEKIT_* settings
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
