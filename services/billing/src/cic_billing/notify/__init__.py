"""Notifications: events read from the platform's event bus (``cic_common.events_bus``) and
delivered to the channels that subscribe to them.

- :mod:`.channels`: the channels (Slack, Discord, email, signed webhooks), checked and stored.
- :mod:`.bus_reader`: reads the bus through a consumer group (replicas share it; entries a
  crashed replica read are taken over with ``XAUTOCLAIM``) and turns each event into one
  delivery row per subscribed channel, in Postgres, at most once per (channel, event).
- :mod:`.worker`: claims due deliveries (``FOR UPDATE SKIP LOCKED`` and a lease, so replicas
  never send the same one at once), sends them, records every attempt, retries network errors,
  429 and 5xx with exponential back-off and jitter, and marks a delivery failed after
  ``NOTIFY_MAX_ATTEMPTS``.
- :mod:`.senders`: how each channel type sends; :mod:`.messages`: what it says.
"""
