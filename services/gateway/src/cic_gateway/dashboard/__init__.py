"""The tenant dashboard under ``/dashboard``: server-rendered pages where a person signs in (by a
one-time email link or OpenID Connect), manages the tenant's API keys and sees its usage and bill.
Its routes are added by :func:`cic_gateway.dashboard.routes.setup_dashboard`."""
