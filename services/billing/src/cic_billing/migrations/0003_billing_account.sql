-- GetBillingAccount reads a tenant's newest payment failure by its Stripe customer.
CREATE INDEX stripe_events_payment_failed_idx ON stripe_events (customer_id, created)
    WHERE type = 'invoice.payment_failed';
