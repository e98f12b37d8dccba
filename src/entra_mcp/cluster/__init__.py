"""Several replicas: one sync leader per tenant (a Redis lease with a fencing token), published snapshots, followers."""
