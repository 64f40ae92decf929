"""CIC billing: the usage ledger in Postgres, priced per model in integer micro-dollars."""
